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
from redis.exceptions import NoScriptError

_async_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}


@lru_cache(maxsize=2)
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def sync_redis() -> redis.Redis | None:
    return _sync_client(settings.REDIS_URL) if settings.REDIS_URL else None


def async_redis() -> aioredis.Redis | None:
    """One client (and connection pool) per event loop: a pool cannot be shared between loops."""
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        for stale_loop in [known for known in _async_clients if known.is_closed()]:
            del _async_clients[stale_loop]
        # Blocking: a burst of concurrent requests waits briefly for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=100, timeout=2, socket_timeout=2, socket_connect_timeout=2
        )
        client = aioredis.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


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
