"""core.redis.redis_command: the commands of one turn of the loop go out in one write on one shared connection, and
each keeps its own answer."""

import asyncio
import socket
import uuid

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import redis as core_redis
from core.redis import RedisScript, redis_command

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL")


def run_with(url: str, work, *, socket_timeout: float = 2):
    async def main():
        client = aioredis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=2)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def key() -> str:
    return f"test:batcher:{uuid.uuid4().hex}"


def test_one_turns_commands_go_as_one_write_and_each_gets_its_own_answer_or_error(monkeypatch):
    counter, listed = key(), key()
    writes = []
    original = core_redis._Pipe.send

    def counting_send(self, batch):
        writes.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(core_redis._Pipe, "send", counting_send)

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
    assert writes == [3]


def test_turns_share_one_connection_and_keep_each_callers_order():
    counter = key()

    async def work(client):
        async def caller(n: int) -> list[int]:
            return [await redis_command(client, "INCR", counter) for _ in range(n)]

        seen = await asyncio.gather(*(caller(50) for _ in range(4)))
        ids = []
        for _ in range(3):
            ids.append(await redis_command(client, "CLIENT", "ID"))
            await asyncio.sleep(0.01)
        return seen, ids

    seen, ids = run_with(settings.REDIS_URL, work)

    assert all(values == sorted(values) for values in seen)
    assert sorted(value for values in seen for value in values) == list(range(1, 201))
    assert len(set(ids)) == 1


def test_replies_get_redis_py_response_callbacks():
    async def work(client):
        return await redis_command(client, "PING"), await redis_command(client, "SET", key(), "x")

    assert run_with(settings.REDIS_URL, work) == (True, True)


def test_an_overdue_reply_fails_its_callers_with_a_timeout_and_the_next_command_reconnects():
    async def work(client):
        blocked = await asyncio.gather(
            redis_command(client, "BLPOP", key(), 3), redis_command(client, "PING"), return_exceptions=True
        )
        return blocked, await redis_command(client, "PING")

    (blocked, queued_behind), after = run_with(settings.REDIS_URL, work, socket_timeout=0.3)

    assert isinstance(blocked, RedisTimeoutError)
    assert isinstance(queued_behind, RedisTimeoutError)
    assert after is True


def test_a_connection_the_server_closes_fails_what_waits_on_it_and_the_next_command_reconnects():
    async def work(client):
        own_id = await redis_command(client, "CLIENT", "ID")
        waiting = asyncio.ensure_future(redis_command(client, "BLPOP", key(), 2))
        await asyncio.sleep(0.1)
        killer = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            await killer.client_kill_filter(_id=own_id)
        finally:
            await killer.aclose()
        failed = await asyncio.gather(waiting, return_exceptions=True)
        return own_id, failed[0], await redis_command(client, "CLIENT", "ID")

    own_id, failed, new_id = run_with(settings.REDIS_URL, work)

    assert isinstance(failed, RedisConnectionError)
    assert new_id != own_id


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


def test_a_command_that_cannot_be_sent_fails_alone():
    counter = key()

    async def work(client):
        return await asyncio.gather(
            redis_command(client, "INCR", counter),
            redis_command(client, "SET", key(), None),
            redis_command(client, "INCR", counter),
            return_exceptions=True,
        )

    first, refused, second = run_with(settings.REDIS_URL, work)

    assert (first, second) == (1, 2)
    assert isinstance(refused, DataError)


@pytest.mark.parametrize("unsendable", [None, "\udc80"], ids=["not a string", "lone surrogate"])
def test_a_command_that_cannot_be_packed_leaves_every_other_reply_to_its_own_caller(unsendable):
    first, second = key(), key()

    async def work(client):
        await client.set(first, "one")
        await client.set(second, "two")
        cancelled = asyncio.ensure_future(redis_command(client, "GET", None))
        await asyncio.sleep(0)
        cancelled.cancel()
        answers = await asyncio.gather(
            redis_command(client, "GET", first),
            redis_command(client, "GET", unsendable),
            redis_command(client, "GET", second),
            return_exceptions=True,
        )
        return answers, await redis_command(client, "GET", first)

    (got_first, refused, got_second), again = run_with(settings.REDIS_URL, work)

    assert (got_first, got_second, again) == (b"one", b"two", b"one")
    assert isinstance(refused, DataError)


@pytest.mark.parametrize("options", ["protocol=3", "decode_responses=true"])
def test_resp3_and_decoded_replies_reach_their_callers(options):
    flag, text = key(), key()
    url = f"{settings.REDIS_URL}?{options}"

    async def work(client):
        await client.set(text, "value")
        return await asyncio.gather(
            redis_command(client, "EVAL", "return redis.setresp(3) or false", 0)
            if "protocol" in options
            else redis_command(client, "EXISTS", flag),
            redis_command(client, "GET", text),
            redis_command(client, "PING"),
        )

    falsy, value, pong = run_with(url, work)

    assert not falsy
    assert value == ("value" if "decode" in options else b"value")
    assert pong is True


@pytest.mark.parametrize(
    "command",
    [
        ("MULTI",),
        ("SELECT", 1),
        ("SUBSCRIBE", "x"),
        ("client", "reply", "off"),
        (b"multi",),
        (b"CLIENT", b"TRACKING", "on"),
    ],
)
def test_commands_that_change_the_shared_connection_are_refused(command):
    async def work(client):
        return await asyncio.gather(
            redis_command(client, *command), redis_command(client, "PING"), return_exceptions=True
        )

    refused, pong = run_with(settings.REDIS_URL, work)

    assert isinstance(refused, DataError)
    assert pong is True


def test_closing_the_client_fails_what_waits_and_closes_the_connection():
    async def work(client):
        waiting = asyncio.ensure_future(redis_command(client, "BLPOP", key(), 5))
        await asyncio.sleep(0.1)
        started = asyncio.get_running_loop().time()
        await client.aclose()
        failed = (await asyncio.gather(waiting, return_exceptions=True))[0]
        return failed, asyncio.get_running_loop().time() - started

    failed, seconds = run_with(settings.REDIS_URL, work)

    assert isinstance(failed, RedisConnectionError)
    assert seconds < 1


def test_a_reply_that_cannot_be_decoded_fails_only_its_caller():
    binary, text = key(), key()

    async def work(client):
        raw = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            await raw.set(binary, b"\xff\xfe")
        finally:
            await raw.aclose()
        await client.set(text, "value")
        return await asyncio.gather(
            redis_command(client, "GET", binary), redis_command(client, "GET", text), return_exceptions=True
        )

    undecodable, value = run_with(f"{settings.REDIS_URL}?decode_responses=true", work)

    assert isinstance(undecodable, DataError)
    assert value == "value"
