"""core.redis.redis_command: the commands of one turn of the loop share a pipeline, and each keeps its own answer."""

import asyncio
import socket
import uuid

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from core.redis import RedisScript, redis_command

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL")


def run_with(url: str, work):
    async def main():
        client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def key() -> str:
    return f"test:batcher:{uuid.uuid4().hex}"


def test_one_turns_commands_go_as_one_pipeline_and_each_gets_its_own_answer_or_error(monkeypatch):
    counter, listed = key(), key()
    pipelines = []
    original = aioredis.Redis.pipeline

    def counting_pipeline(self, *args, **kwargs):
        pipelines.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(aioredis.Redis, "pipeline", counting_pipeline)

    async def work(client):
        await client.rpush(listed, "x")
        return await asyncio.gather(
            redis_command(client, "INCR", counter),
            redis_command(client, "INCR", listed),  # a list is no counter: this command's own error
            redis_command(client, "INCRBY", counter, 2),
            return_exceptions=True,
        )

    first, wrong_type, third = run_with(settings.REDIS_URL, work)

    assert (first, third) == (1, 3)
    assert isinstance(wrong_type, ResponseError)
    assert pipelines == [1]


def test_a_script_the_server_does_not_know_falls_back_to_its_source_within_a_batch():
    script = RedisScript(f"return '{uuid.uuid4().hex}'")

    async def work(client):
        await client.script_flush()
        return await asyncio.gather(script.run(client, [], []), redis_command(client, "PING"))

    answer, pong = run_with(settings.REDIS_URL, work)

    assert answer.decode() == script.source.split("'")[1]
    assert pong is True


def test_a_connection_failure_reaches_every_caller_of_the_turn():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    async def work(client):
        return await asyncio.gather(
            redis_command(client, "GET", "a"), redis_command(client, "GET", "b"), return_exceptions=True
        )

    results = run_with(f"redis://127.0.0.1:{port}/0", work)

    assert [type(result) for result in results] == [RedisConnectionError, RedisConnectionError]


def test_a_command_whose_caller_was_cancelled_before_the_write_is_still_sent():
    """As a command written at once would have been: a settle or a ledger record is not taken back."""
    counter = key()

    async def work(client):
        cancelled = asyncio.ensure_future(redis_command(client, "INCR", counter))
        await asyncio.sleep(0)  # the caller has queued its command; the turn's write has not happened yet
        cancelled.cancel()
        sent = await redis_command(client, "INCR", counter)
        return cancelled.cancelled(), sent

    was_cancelled, sent = run_with(settings.REDIS_URL, work)

    assert was_cancelled
    assert sent == 2
