"""Shared Redis clients, or None where REDIS_URL is unset (the embedded default runs without Redis).

Callers must handle None with their documented fallback (database, or in-process).
"""

import asyncio
import hashlib
import weakref
from collections.abc import Sequence
from functools import lru_cache

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import NoScriptError, RedisError

from core.event_loops import PerEventLoop


@lru_cache(maxsize=2)
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def sync_redis() -> redis.Redis | None:
    return _sync_client(settings.REDIS_URL) if settings.REDIS_URL else None


def _async_client(loop: asyncio.AbstractEventLoop) -> aioredis.Redis:
    # Blocking: a burst of concurrent requests waits briefly for a connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=100, timeout=2, socket_timeout=2, socket_connect_timeout=2
    )
    return aioredis.Redis(connection_pool=pool)


# One client (and connection pool) per event loop: a pool cannot be shared between loops.
_async_clients = PerEventLoop(_async_client)


def async_redis() -> aioredis.Redis | None:
    return _async_clients.get() if settings.REDIS_URL else None


def redis_persistence_problem(client: redis.Redis) -> str:
    """What a restart of this Redis would lose, when it runs without AOF; '' when it persists, or will not say
    (CONFIG refused, as on some managed services)."""
    try:
        appendonly = client.config_get("appendonly").get("appendonly")
    except RedisError:
        return ""
    if appendonly in ("yes", b"yes"):
        return ""
    return (
        "Redis (REDIS_URL) runs without AOF (appendonly no): a restart loses the ledger records not yet drained into "
        "Postgres, and budget counters restart from the ledger without the requests in flight. Run it with "
        "--appendonly yes --appendfsync everysec (README, Production deployment)."
    )


class _CommandBatcher:
    """Commands that a loop's requests issue in one turn of the loop, sent to Redis together: one connection, one
    write and one read for the lot instead of one each. On a busy gateway a socket write per command was a fifth of a
    worker's CPU (docs/performance.md). Each command is still atomic on its own and keeps its own result or error;
    commands of one caller awaited one after another keep their order. A connection failure fails the turn's commands
    together, as it would have failed each of them. A command queued is sent even if its caller is cancelled before
    the turn's write, as one written at once would have been: a settle or a ledger record must not be taken back
    (a reservation whose caller went away is released by billing.budgets.reservations)."""

    def __init__(self, client: aioredis.Redis, loop: asyncio.AbstractEventLoop):
        # Weak: the batcher lives as long as its client, which PerEventLoop forgets with its loop.
        self.client_ref = weakref.ref(client)
        self.loop = loop
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.running: set[asyncio.Task] = set()

    def execute(self, *args) -> asyncio.Future:
        if not self.pending:
            self.loop.call_soon(self._flush)
        future = self.loop.create_future()
        self.pending.append((args, future))
        return future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        task = self.loop.create_task(self._send(batch))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _send(self, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        try:
            client = self.client_ref()
            if not batch or client is None:
                return
            if len(batch) == 1:
                results = [await _one(client, batch[0][0])]
            else:
                pipe = client.pipeline(transaction=False)
                for args, _ in batch:
                    pipe.execute_command(*args)
                results = await pipe.execute(raise_on_error=False)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        finally:
            # Whatever ended the send, no caller waits forever.
            for _, future in batch:
                if not future.done():
                    future.set_exception(RedisError("the Redis client was closed before the command was sent"))


async def _one(client: aioredis.Redis, args: tuple):
    try:
        return await client.execute_command(*args)
    except RedisError as error:
        # A command's own error (as a pipeline returns it), not the batch's.
        return error


_batchers: weakref.WeakKeyDictionary[aioredis.Redis, _CommandBatcher] = weakref.WeakKeyDictionary()


async def redis_command(client: aioredis.Redis, *args):
    """``client.execute_command(*args)``, sent along with the other commands issued in the same turn of the loop.
    Raises what the command would raise (RedisError and its kinds)."""
    batcher = _batchers.get(client)
    if batcher is None:
        batcher = _batchers[client] = _CommandBatcher(client, asyncio.get_running_loop())
    return await batcher.execute(*args)


class RedisScript:
    """A Lua script called by its SHA1 (EVALSHA): the source crosses the wire, and is compiled, only when the server
    does not have it yet (first call, or after a restart or SCRIPT FLUSH). Sent with the loop's other commands."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(self, client: aioredis.Redis, keys: Sequence, args: Sequence):
        try:
            return await redis_command(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis_command(client, "EVAL", self.source, len(keys), *keys, *args)
