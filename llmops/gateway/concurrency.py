"""Each tenant's cap on chat completions in flight, so one tenant's slow or piled-up calls cannot take the gateway's
connections and event loops from the others.

With Redis, one sorted set per tenant (``llmops:inflight:<tenant id>``) holds the ids of its requests in flight, each
scored with the end of its lease on Redis's clock. One script drops ended leases, counts and admits or refuses, so the
cap holds across every gateway process. Each process renews the leases of the requests it holds every third of
LLMOPS_TENANT_INFLIGHT_LEASE_SECONDS, so a long stream keeps its slot, and the slots of a process that dies are free
again once their lease ends. A request gives its slot back when it ends, whichever way: answered, refused later on,
failed, or its client gone (an answer not streamed gives it back as its row is written, a stream when its body
ends or is dropped, or when its response is closed with the body never sent).

Without Redis (the embedded default, one process) the count is kept in process memory. When Redis cannot be reached
the request goes through, logged: the cap is for fairness, and budgets keep their own fail-closed rule.
"""

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from redis.exceptions import RedisError

from core.background import run_in_background
from core.event_loops import PerEventLoop
from core.redis import RedisScript, async_redis, redis_command
from llmops.gateway.errors import GatewayError

logger = logging.getLogger(__name__)

KEY_PREFIX = "llmops:inflight:"
RETRY_AFTER_SECONDS = 1

# KEYS: the tenant's set. ARGV: the cap, the lease in ms, the request id. 1: admitted, 0: refused.
_ACQUIRE = RedisScript("""
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""")
# KEYS: the tenant's set. ARGV: the lease in ms, then the ids of the requests still held (released ones stay out: XX).
_RENEW = RedisScript("""
local clock = redis.call('TIME')
local lease_end = clock[1] * 1000 + math.floor(clock[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], 'XX', lease_end, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
""")


class TenantConcurrencyExceeded(GatewayError):
    def __init__(self, limit: int):
        super().__init__(
            f"Your tenant has {limit} requests in flight, its limit; retry when one of them has finished.",
            status=429,
            code="tenant_concurrency_limit_exceeded",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


def _lease_ms() -> int:
    return max(int(settings.LLMOPS_TENANT_INFLIGHT_LEASE_SECONDS * 1000), 1)


class _Renewals:
    """The slots this process holds in Redis from one event loop, and the task renewing their leases while any is
    held."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.held: dict[int, set[str]] = {}
        self.task: asyncio.Task | None = None

    def hold(self, slot: "InflightSlot") -> None:
        self.held.setdefault(slot.tenant_id, set()).add(slot.request_id)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._renew_while_held())

    def drop(self, slot: "InflightSlot") -> None:
        request_ids = self.held.get(slot.tenant_id)
        if request_ids is not None:
            request_ids.discard(slot.request_id)
            if not request_ids:
                del self.held[slot.tenant_id]

    async def _renew_while_held(self) -> None:
        while self.held:
            lease_ms = _lease_ms()
            await asyncio.sleep(lease_ms / 3000)
            client = async_redis()
            held = [(tenant_id, sorted(request_ids)) for tenant_id, request_ids in self.held.items()]
            results = await asyncio.gather(
                *(_RENEW.run(client, [KEY_PREFIX + str(tenant)], [lease_ms, *ids]) for tenant, ids in held),
                return_exceptions=True,
            )
            if failures := [result for result in results if isinstance(result, Exception)]:
                logger.warning("in-flight leases not renewed, Redis unreachable: %s", failures[0])


_renewals = PerEventLoop(_Renewals)


class _LocalCounts:
    """Requests in flight per tenant in this process, for deployments without Redis."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[int, int] = {}

    def take(self, tenant_id: int, limit: int) -> None:
        with self.lock:
            held = self.counts.get(tenant_id, 0)
            if held >= limit:
                raise TenantConcurrencyExceeded(limit)
            self.counts[tenant_id] = held + 1

    def give_back(self, tenant_id: int) -> None:
        with self.lock:
            held = self.counts.get(tenant_id, 0) - 1
            if held > 0:
                self.counts[tenant_id] = held
            else:
                self.counts.pop(tenant_id, None)


_local_counts = _LocalCounts()


@dataclass(slots=True)
class InflightSlot:
    tenant_id: int
    request_id: str
    # The loop's renewals for a slot held in Redis; None for a slot counted in process memory.
    renewals: _Renewals | None = None
    released: bool = False


def inflight_limit(configured: int | None) -> int:
    """The tenant's own cap, else the installation's; 0 means none."""
    return settings.LLMOPS_TENANT_MAX_INFLIGHT if configured is None else configured


async def inflight_acquire(*, tenant_id: int, request_id: str, limit: int) -> InflightSlot | None:
    """A slot under the tenant's cap of `limit`, or TenantConcurrencyExceeded. None when Redis could not count it."""
    client = async_redis()
    if client is None:
        _local_counts.take(tenant_id, limit)
        return InflightSlot(tenant_id, request_id)
    try:
        admitted = await _ACQUIRE.run(client, [KEY_PREFIX + str(tenant_id)], [limit, _lease_ms(), request_id])
    except RedisError as exc:
        logger.warning("in-flight cap of tenant %s not applied, Redis unreachable: %s", tenant_id, exc)
        return None
    if not admitted:
        raise TenantConcurrencyExceeded(limit)
    slot = InflightSlot(tenant_id, request_id, renewals=_renewals.get())
    slot.renewals.hold(slot)
    return slot


def inflight_release(slot: InflightSlot) -> None:
    """Give the slot back; once, whatever calls it again. Not awaited: the answer does not wait for Redis, and a
    release that does not reach it ends with the lease."""
    if slot.released:
        return
    slot.released = True
    if slot.renewals is None:
        _local_counts.give_back(slot.tenant_id)
        return
    slot.renewals.drop(slot)
    run_in_background(_forget(slot), loop=slot.renewals.loop)


async def _forget(slot: InflightSlot) -> None:
    try:
        await redis_command(async_redis(), "ZREM", KEY_PREFIX + str(slot.tenant_id), slot.request_id)
    except RedisError as exc:
        logger.warning("in-flight slot of %s left to its lease, Redis unreachable: %s", slot.request_id, exc)


async def _released_at_the_end(content: AsyncIterator[bytes], slot: InflightSlot) -> AsyncIterator[bytes]:
    try:
        async with aclosing(content):
            async for part in content:
                yield part
    finally:
        inflight_release(slot)


class _SlotHeldByBody:
    """A stream's body that holds the request's slot: given back when the body ends or is dropped, or when the
    response is closed with its body never iterated (the client left while the headers waited to go out): Django
    calls the body's ``close()`` when it closes the response."""

    __slots__ = ("content", "slot")

    def __init__(self, content: AsyncIterator[bytes], slot: InflightSlot):
        self.content, self.slot = content, slot

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _released_at_the_end(self.content, self.slot)

    def close(self) -> None:
        inflight_release(self.slot)


def inflight_release_after(slot: InflightSlot | None, response: HttpResponse | None) -> None:
    """Give the slot back once the response is done: now, or for a stream when its body ends, is dropped, or the
    response is closed unsent."""
    if slot is None:
        return
    if isinstance(response, StreamingHttpResponse):
        response.streaming_content = _SlotHeldByBody(response.streaming_content, slot)
        return
    inflight_release(slot)
