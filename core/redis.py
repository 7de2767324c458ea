"""Shared Redis clients, or None where REDIS_URL is unset (the embedded default runs without Redis).

Callers must handle None with their documented fallback (database, or in-process).
"""

import asyncio
import hashlib
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


class RedisScript:
    """A Lua script called by its SHA1 (EVALSHA): the source crosses the wire, and is compiled, only when the server
    does not have it yet (first call, or after a restart or SCRIPT FLUSH)."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(self, client: aioredis.Redis, keys: Sequence, args: Sequence):
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)
