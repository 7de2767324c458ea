"""A tenant's slots for requests in flight, in Redis and without it: leases end for a process that died, are renewed
while a request runs, and a Redis that cannot be reached lets requests through."""

import asyncio
import uuid

import pytest

from llmops.gateway.concurrency import TenantConcurrencyExceeded, inflight_acquire, inflight_release
from tests.loops import run


@pytest.fixture
def tenant_id() -> int:
    return uuid.uuid4().int % 1_000_000_000


async def refused(tenant_id: int, limit: int) -> bool:
    try:
        slot = await inflight_acquire(tenant_id=tenant_id, request_id=uuid.uuid4().hex, limit=limit)
    except TenantConcurrencyExceeded:
        return True
    inflight_release(slot)
    return False


def test_the_slots_of_a_process_that_died_are_free_again_once_their_lease_ends(settings, tenant_id):
    assert settings.REDIS_URL, "run with TEST_REDIS_URL"
    settings.LLMOPS_TENANT_INFLIGHT_LEASE_SECONDS = 0.3

    async def dies_holding_both():
        for request_id in ("first", "second"):
            await inflight_acquire(tenant_id=tenant_id, request_id=request_id, limit=2)

    async def later():
        at_once = await refused(tenant_id, 2)
        await asyncio.sleep(0.4)
        return at_once, await refused(tenant_id, 2)

    run(dies_holding_both())

    assert run(later()) == (True, False)


def test_a_slot_is_renewed_while_its_request_runs_and_free_once_given_back(settings, tenant_id):
    assert settings.REDIS_URL, "run with TEST_REDIS_URL"
    settings.LLMOPS_TENANT_INFLIGHT_LEASE_SECONDS = 0.3

    async def scenario():
        slot = await inflight_acquire(tenant_id=tenant_id, request_id="long-stream", limit=1)
        await asyncio.sleep(1.0)  # three leases long
        while_held = await refused(tenant_id, 1)
        inflight_release(slot)
        await asyncio.sleep(0.05)
        return while_held, await refused(tenant_id, 1)

    assert run(scenario()) == (True, False)


def test_without_redis_the_cap_is_counted_in_the_process(settings, tenant_id):
    settings.REDIS_URL = ""

    async def scenario():
        first = await inflight_acquire(tenant_id=tenant_id, request_id="a", limit=2)
        await inflight_acquire(tenant_id=tenant_id, request_id="b", limit=2)
        full = await refused(tenant_id, 2)
        inflight_release(first)
        inflight_release(first)  # a second release gives nothing more back
        return full, await refused(tenant_id, 2), await refused(tenant_id, 1)

    assert run(scenario()) == (True, False, True)


def test_a_redis_that_cannot_be_reached_lets_the_request_through(settings, tenant_id):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    assert run(inflight_acquire(tenant_id=tenant_id, request_id="a", limit=1)) is None
