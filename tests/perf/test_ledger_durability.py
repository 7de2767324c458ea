"""The durable ledger: kill -9 of the gateway and the drainer under load loses no row a client was answered for,
and draining again, or with two drainers, never duplicates one."""

import asyncio
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from billing.ledger.events import UsageEvent
from billing.ledger.services import usage_record_create
from billing.ledger.stream import (
    EVENT_FIELD,
    GROUP,
    STREAM_KEY,
    ledger_event_append,
    ledger_stream_client,
    ledger_stream_drain,
    ledger_stream_recover,
    staging_table,
    usage_event_encode,
)
from billing.models import UsageRecord
from core.redis import sync_redis
from tests.conftest import make_tenant_setup

CONCURRENCY = 16
ANSWERS_BEFORE_KILL = 150
ANSWERS_AFTER_RESTART = 150
MAX_ATTEMPTS = 1000
LOAD_TIMEOUT_SECONDS = 180


@dataclass
class LoadOutcome:
    answered: dict[str, Decimal] = field(default_factory=dict)
    failed: int = 0


async def drive_load(url: str, key: str, model: str, on_answered, *, gateway_up: asyncio.Event) -> LoadOutcome:
    """Send chat completions, CONCURRENCY at a time, until ANSWERS_BEFORE_KILL + ANSWERS_AFTER_RESTART were answered
    with 200 (noting each one's cost); a request that fails waits until the gateway is up again, so the load goes on
    by answers, not by the clock. Bounded by MAX_ATTEMPTS and LOAD_TIMEOUT_SECONDS."""
    outcome = LoadOutcome()
    attempts = iter(range(MAX_ATTEMPTS))
    target = ANSWERS_BEFORE_KILL + ANSWERS_AFTER_RESTART
    body = {"model": model, "messages": [{"role": "user", "content": "Summarise the refund policy"}]}

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in attempts:
            if len(outcome.answered) >= target:
                return
            try:
                response = await client.post(f"{url}/v1/chat/completions", json=body)
            except httpx.TransportError:
                outcome.failed += 1
                await gateway_up.wait()
                continue
            if response.status_code != 200:
                outcome.failed += 1
                continue
            outcome.answered[response.headers["x-llmops-request-id"]] = Decimal(response.headers["x-llmops-cost-usd"])
            await on_answered(len(outcome.answered))

    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as client:
        await asyncio.wait_for(
            asyncio.gather(*(worker(client) for _ in range(CONCURRENCY))), timeout=LOAD_TIMEOUT_SECONDS
        )
    return outcome


def wait_for_empty_stream(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sync_redis().xlen(STREAM_KEY):
        assert time.monotonic() < deadline, f"{sync_redis().xlen(STREAM_KEY)} ledger records never drained"
        time.sleep(0.05)


@pytest.fixture
def process_env(process_env):
    """No embedding model in the spawned gateway (seconds of CPU at each start): this test does not use the semantic
    cache."""
    return {**process_env, "LLMOPS_CACHE_EMBEDDER": ""}


def test_kill_9_of_gateway_and_drainer_mid_load_loses_no_answered_request(spawn, gateway_port, mock_upstream):
    """The kill is triggered by a count of answers and the load then runs to a count of answers after the restart,
    so every assertion holds whatever the machine's speed."""
    setup = make_tenant_setup(mock_upstream.url, slug="perf")
    start_gateway, start_drainer = spawn
    gateway = start_gateway(gateway_port).start()
    drainer = start_drainer("perf-a").start()
    killed = asyncio.Event()
    gateway_up = asyncio.Event()
    gateway_up.set()

    async def kill_and_restart_mid_load(answered: int) -> None:
        if answered < ANSWERS_BEFORE_KILL or killed.is_set():
            return
        killed.set()
        gateway_up.clear()
        gateway.kill()
        drainer.kill()
        await asyncio.to_thread(gateway.start)
        drainer.start()
        start_drainer("perf-b").start()
        gateway_up.set()

    outcome = asyncio.run(
        drive_load(
            f"http://127.0.0.1:{gateway_port}",
            setup.key,
            setup.small.name,
            kill_and_restart_mid_load,
            gateway_up=gateway_up,
        )
    )
    wait_for_empty_stream()
    call_command("ledger_drain", "--once", "--consumer", "perf-check")
    call_command("ledger_drain", "--once", "--consumer", "perf-check")

    assert killed.is_set() and outcome.failed > 0, "the gateway was not killed while requests were in flight"
    assert len(outcome.answered) >= ANSWERS_BEFORE_KILL + ANSWERS_AFTER_RESTART
    answered = UsageRecord.objects.unscoped().filter(request_id__in=outcome.answered)
    assert answered.count() == len(outcome.answered)
    assert answered.aggregate(total=Sum("cost_usd"))["total"] == sum(outcome.answered.values())
    # Requests cut off by the kill may or may not have their row; none has two, and nothing else appears.
    assert UsageRecord.objects.unscoped().count() <= len(outcome.answered) + outcome.failed


@pytest.fixture
def ledger_tenant(transactional_db, ledger_drainer):
    """A tenant to charge, with the session's drainer thread paused: these tests are the drainers."""
    with ledger_drainer.paused():
        yield make_tenant_setup("http://127.0.0.1:9", slug="ledger")


def make_events(setup, count: int) -> list[UsageEvent]:
    now = timezone.now()
    return [
        UsageEvent(
            request_id=f"req_drain_{index:04d}",
            tenant_id=setup.tenant.id,
            team_id=setup.team.id,
            api_key_id=setup.api_key.id,
            created_at=now,
            http_status=200,
            served_model=setup.small.name,
            prompt_tokens=100 + index,
            completion_tokens=20,
            cost_usd=Decimal("0.0000123457") * (index + 1),
            tags=["drain"],
        )
        for index in range(count)
    ]


async def append_all(events: list[UsageEvent]) -> None:
    for event in events:
        await ledger_event_append(event=event)


def run_in_threads(*targets) -> None:
    """Each target runs on its own thread, with its own database connection, as separate drainers would."""

    def closing(target):
        def run():
            try:
                target()
            finally:
                connection.close()

        return run

    threads = [threading.Thread(target=closing(target)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


def test_restarted_and_competing_drainers_settle_every_record_exactly_once(ledger_tenant):
    events = make_events(ledger_tenant, 50)
    client = ledger_stream_client()
    asyncio.run(append_all(events))
    assert client.xlen(STREAM_KEY) == 50 and not UsageRecord.objects.unscoped().exists()

    # One drainer read 20 entries and died; another read 10, inserted them, and died before acknowledging.
    ledger_stream_recover(client=client, consumer="died-after-read")
    client.xreadgroup(GROUP, "died-after-read", {STREAM_KEY: ">"}, count=20)
    client.xreadgroup(GROUP, "died-after-insert", {STREAM_KEY: ">"}, count=10)
    for event in events[20:30]:
        usage_record_create(event=event)

    # The first restarts under its name and settles its own pending entries, leaving the other's alone.
    assert ledger_stream_recover(client=client, consumer="died-after-read", claim_idle_ms=600_000) == 20
    assert UsageRecord.objects.unscoped().count() == 30

    # Two drainers at once: they claim the dead one's entries and share the rest; the replayed inserts are no-ops.
    def drainer(name: str):
        return lambda: (
            ledger_stream_recover(client=ledger_stream_client(), consumer=name, claim_idle_ms=0),
            ledger_stream_drain(client=ledger_stream_client(), consumer=name, batch_size=7),
            ledger_stream_drain(client=ledger_stream_client(), consumer=name, batch_size=7),
            ledger_stream_drain(client=ledger_stream_client(), consumer=name, batch_size=7),
        )

    run_in_threads(drainer("b"), drainer("c"))
    # The same events appended again (a client retry of the XADD, a replayed stream) change nothing.
    client.xadd(STREAM_KEY, {EVENT_FIELD: usage_event_encode(events[0])})
    client.xadd(STREAM_KEY, {EVENT_FIELD: usage_event_encode(events[49])})
    call_command("ledger_drain", "--once", "--consumer", "b")
    call_command("ledger_drain", "--once", "--consumer", "c")

    assert client.xlen(STREAM_KEY) == 0
    assert client.xpending(STREAM_KEY, GROUP)["pending"] == 0
    assert UsageRecord.objects.unscoped().count() == 50
    assert UsageRecord.objects.unscoped().aggregate(total=Sum("cost_usd"))["total"] == sum(
        event.cost_usd for event in events
    )
    stored = UsageRecord.objects.unscoped().get(request_id="req_drain_0007")
    assert (stored.prompt_tokens, stored.tags, stored.cost_usd) == (107, ["drain"], Decimal("0.0000987656"))


def orphaned(event, ledger_tenant):
    """Refused at the commit: its tenant does not exist (the foreign key is checked when the transaction ends)."""
    event.tenant_id = ledger_tenant.tenant.id + 1000


def overlong(event, ledger_tenant):
    """Refused as the batch is copied: a customer longer than its column."""
    event.customer = "c" * 500


@pytest.mark.parametrize("spoil", [orphaned, overlong])
def test_a_record_that_can_never_be_a_row_is_set_aside_not_retried_forever(ledger_tenant, spoil):
    good, spoiled = make_events(ledger_tenant, 2)
    spoil(spoiled, ledger_tenant)
    client = ledger_stream_client()
    asyncio.run(append_all([spoiled, good]))

    call_command("ledger_drain", "--once")

    assert list(UsageRecord.objects.unscoped().values_list("request_id", flat=True)) == [good.request_id]
    assert client.xlen(STREAM_KEY) == 0
    ((_entry_id, dead_fields),) = client.xrange("llmops:ledger:dead")
    assert spoiled.request_id.encode() in dead_fields[EVENT_FIELD]
    # The drain ran on this thread's connection: the batch's staging table is left empty.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM pg_temp.{staging_table(connection)[0]}")
        assert cursor.fetchone() == (0,)
