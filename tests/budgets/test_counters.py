"""Counters start from the truth: the ledger's spend in the period (the stream's backlog included, each record once)
plus the reservations in flight, for a new budget, a changed one, and a counter that went missing."""

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import connection, transaction
from redis.exceptions import ConnectionError as RedisConnectionError

from billing.budgets import reservations
from billing.budgets.counters import RESERVE_SCRIPT, SETTLE_SCRIPT, BudgetHold
from billing.budgets.index import build_budget_index, usd_to_units
from billing.budgets.periods import budget_window
from billing.budgets.reservations import (
    BudgetExceeded,
    BudgetUnavailable,
    _resettle,
    budget_reserve,
    reservation_settle,
)
from billing.budgets.services import budget_counter_check, budget_counters_rebuild, budget_create, budget_update
from billing.budgets.tasks import budget_counters_check as budget_counters_check_task
from billing.budgets.thresholds import threshold_alerts_wait
from billing.ledger import stream
from billing.ledger.events import UsageEvent
from billing.ledger.stream import STREAM_KEY, ledger_stream_drain, ledger_stream_recover, usage_event_encode
from billing.models import BudgetAlert, BudgetCounter, BudgetScope, UsageKind, UsageRecord
from core.background import background_drain
from core.db import database_sync_to_async
from llmops.gateway.chat import admission
from tests.budgets.conftest import UNREACHABLE_REDIS_URL
from tests.loops import run

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def event(
    org, *, request_id: str, cost: str, created_at: datetime = NOW, api_key=None, kind: str = UsageKind.REQUEST
) -> UsageEvent:
    api_key = api_key or org.api_key
    return UsageEvent(
        request_id=request_id,
        tenant_id=org.tenant.pk,
        team_id=api_key.team_id,
        api_key_id=api_key.pk,
        created_at=created_at,
        http_status=200,
        cost_usd=Decimal(cost),
        kind=kind,
    )


def ledger(
    org, *, cost: str, created_at: datetime = NOW, api_key=None, request_id: str = "", kind: str = UsageKind.REQUEST
):
    found = event(
        org, request_id=request_id or f"r-{UsageRecord.objects.unscoped().count()}", cost=cost, created_at=created_at
    )
    api_key = api_key or org.api_key
    UsageRecord.objects.create(
        request_id=found.request_id,
        tenant=org.tenant,
        team=api_key.team,
        api_key=api_key,
        cost_usd=found.cost_usd,
        http_status=200,
        created_at=created_at,
        kind=kind,
    )


def drain(client) -> None:
    """Play the drainer: move every record in the ledger stream into Postgres."""
    ledger_stream_recover(client=client, consumer="test")
    while ledger_stream_drain(client=client, consumer="test"):
        pass


def wait_for_row(request_id: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not UsageRecord.objects.unscoped().filter(request_id=request_id).exists():
        assert time.monotonic() < deadline, f"{request_id} never reached the ledger"
        time.sleep(0.05)


def entries(org):
    return build_budget_index(tenant_id=org.tenant.pk).applicable(org.tenant.pk, org.team.pk, org.api_key.pk, "m")


def reserve(org, amount: str, request_id: str = "x"):
    return run(budget_reserve(budgets=entries(org), amount=Decimal(amount), request_id=request_id, now=NOW))


def refusal(org, amount: str) -> BudgetExceeded:
    with pytest.raises(BudgetExceeded) as refused:
        reserve(org, amount)
    return refused.value


def past_spend(org):
    ledger(org, cost="1.5", created_at=NOW - timedelta(days=1))
    ledger(org, cost="0.25", created_at=NOW - timedelta(hours=1))
    ledger(org, cost="7", created_at=datetime(2026, 10, 31, 23, tzinfo=UTC))  # last month
    ledger(org, cost="9", api_key=org.other_key)  # another team


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_a_new_budget_counts_what_the_period_already_spent(live_org, backend, settings, redis_counters):
    if backend == "database":
        settings.REDIS_URL = ""
    past_spend(live_org)
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(3))

    refused = refusal(live_org, "2")

    assert (refused.spent_usd, refused.reserved_usd, refused.remaining_usd) == (Decimal("1.75"), 0, Decimal("1.25"))
    assert (refused.limit_usd, refused.requested_usd) == (Decimal(3), Decimal(2))
    assert "cannot hold this request's worst case of $2" in str(refused)
    assert reserve(live_org, "1").remaining_usd == Decimal("0.25")


def test_a_budget_created_below_the_period_spend_says_it_is_used_up(live_org, redis_counters):
    past_spend(live_org)
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal("0.05"))

    refused = refusal(live_org, "0.0000001")

    assert (refused.spent_usd, refused.remaining_usd) == (Decimal("1.75"), 0)
    assert "is used up: $1.7500000000 spent" in str(refused)


def test_the_seed_counts_the_stream_backlog_and_drained_records_once_each(live_org, redis_counters):
    """Records appended to the ledger stream and not drained yet are spend too; one drained but not yet deleted
    from the stream is in both places and counts once."""
    ledger(live_org, cost="1", request_id="in-postgres")
    ledger(live_org, cost="2", request_id="in-both")
    redis_counters.xadd(STREAM_KEY, {"event": usage_event_encode(event(live_org, request_id="in-both", cost="2"))})
    redis_counters.xadd(STREAM_KEY, {"event": usage_event_encode(event(live_org, request_id="in-stream", cost="4"))})
    other_team = event(live_org, request_id="other-team", cost="8", api_key=live_org.other_key)
    redis_counters.xadd(STREAM_KEY, {"event": usage_event_encode(other_team)})
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(10))

    assert refusal(live_org, "3.5").spent_usd == Decimal(7)
    assert reserve(live_org, "3").remaining_usd == 0


def test_a_changed_budget_is_seeded_again_and_keeps_the_reservations_in_flight(live_org, redis_counters):
    budget = budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(10))
    in_flight = reserve(live_org, "2", request_id="in-flight")
    ledger(live_org, cost="3")  # spend the counter never saw (recorded while it was not there)

    budget_update(budget=budget, limit_usd=Decimal(6))
    refused = refusal(live_org, "1.5")

    assert (refused.spent_usd, refused.reserved_usd, refused.remaining_usd) == (3, 2, 1)
    # The request in flight settles into the new counter: its reservation goes, its cost stays.
    run(reservation_settle(in_flight, actual=Decimal("0.5"), event=event(live_org, request_id="in-flight", cost="0.5")))
    assert reserve(live_org, "2.5").remaining_usd == 0


def test_a_flushed_counter_is_seeded_again_before_the_next_request(live_org, redis_counters):
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    first = reserve(live_org, "4", request_id="first")
    run(reservation_settle(first, actual=Decimal(4), event=event(live_org, request_id="first", cost="4")))
    drain(redis_counters)
    wait_for_row("first")  # a drainer of the session may hold it instead of this test's
    in_flight = reserve(live_org, "1", request_id="in-flight")

    redis_counters.flushdb()

    assert refusal(live_org, "1.5").spent_usd == Decimal(4)
    # The reservation made before the flush is not in the new counter, and its settle takes nothing from it.
    late = event(live_org, request_id="in-flight", cost="0.25")
    run(reservation_settle(in_flight, actual=Decimal("0.25"), event=late))
    assert reserve(live_org, "0.75").remaining_usd == 0


def test_a_settle_sent_again_after_redis_came_back_is_not_counted_twice_by_a_reseeded_counter(live_org, redis_counters):
    """A settle that met Redis down wrote its row to Postgres and is sent again later; a counter seeded in between has
    read that row already, so the resend releases nothing of it and adds no spend."""
    budget = budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    in_flight = reserve(live_org, "2", request_id="resent")
    ledger(live_org, cost="1", request_id="resent")  # the row the failed settle wrote to the database
    redis_counters.flushdb()  # Redis came back without the counter
    assert refusal(live_org, "4.5").spent_usd == Decimal(1)  # seeded again, from the ledger

    run(_resettle(in_flight, [usd_to_units(Decimal(1))]))

    check = budget_counter_check(budget=budget, now=NOW)
    assert check.counted_usd == check.ledger_usd == Decimal(1)
    assert reserve(live_org, "4").remaining_usd == 0


def counter_key(org) -> str:
    return BudgetHold(entry=entries(org)[0], window=budget_window(period="month", zone=UTC, now=NOW)).redis_key


def counter_fields(client, key: str) -> tuple[int, int, dict[str, int]]:
    """A Redis counter's spent, reserved, and what each request in flight holds (by request id)."""
    fields = {name.decode(): int(value) for name, value in client.hgetall(key).items() if value.isdigit()}
    held = {
        name.removeprefix("held:").rpartition(":")[0]: value
        for name, value in fields.items()
        if name.startswith("held:")
    }
    return fields.get("spent", 0), fields.get("reserved", 0), held


async def cancel_then_wait_released(task: asyncio.Task, client, key: str, request_id: str):
    """Cancel `task` (its client hung up), then wait until the counter notes nothing held for `request_id` (or 5 s
    have passed); the counter's fields then."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while request_id in (fields := counter_fields(client, key))[2] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return fields


def test_a_settle_sent_again_after_its_first_reached_redis_releases_and_counts_once(live_org, redis_counters):
    """The first settle ran and only its reply was lost, so it is sent again: the counter has nothing of the request
    left to release or to count, and the other request keeps its reservation."""
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    resent = reserve(live_org, "2", request_id="resent")
    reserve(live_org, "1", request_id="other")
    run(reservation_settle(resent, actual=Decimal("0.5"), event=event(live_org, request_id="resent", cost="0.5")))

    run(_resettle(resent, [usd_to_units(Decimal("0.5"))]))

    key = counter_key(live_org)
    spent, reserved, held = counter_fields(redis_counters, key)
    assert (spent, reserved) == (usd_to_units(Decimal("0.5")), usd_to_units(Decimal(1)))
    assert held == {"other": usd_to_units(Decimal(1))}


def test_a_reserve_whose_caller_went_away_after_it_reached_redis_is_released(live_org, redis_counters, monkeypatch):
    """The client disconnected while its reserve was in Redis and the reply on its way (the request's task is
    cancelled, and nobody would settle what it holds): the reservation is released, once, and only it."""
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    reserve(live_org, "1", request_id="other")
    budgets, key = entries(live_org), counter_key(live_org)
    reply_on_its_way = RESERVE_SCRIPT.run

    async def reply_never_read(client, keys, args):
        await reply_on_its_way(client, keys, args)
        reached.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(RESERVE_SCRIPT, "run", reply_never_read)

    async def cancelled_then_released() -> dict[str, int]:
        reserving = asyncio.create_task(budget_reserve(budgets=budgets, amount=Decimal(2), request_id="gone", now=NOW))
        await reached.wait()
        assert counter_fields(redis_counters, key)[2] == {"other": usd_to_units(Decimal(1)), "gone": 2 * 10**10}
        return (await cancel_then_wait_released(reserving, redis_counters, key, "gone"))[2]

    reached = asyncio.Event()
    assert asyncio.run(cancelled_then_released()) == {"other": usd_to_units(Decimal(1))}
    assert counter_fields(redis_counters, key)[:2] == (0, usd_to_units(Decimal(1)))


def test_a_reservation_made_while_the_rate_limit_was_still_checked_is_given_back_when_the_client_goes(
    live_org, redis_counters, monkeypatch
):
    """Admission waits on the rate limit, the slot and the reserve together; the reserve has answered when the
    client hangs up: the reservation it got is settled at nothing, not left to the period's end."""
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    budgets, key = entries(live_org), counter_key(live_org)

    async def rate_limit_never_answers(**kwargs):
        await asyncio.Event().wait()

    monkeypatch.setattr(admission, "rate_limit_check", rate_limit_never_answers)
    monkeypatch.setattr(admission.timezone, "now", lambda: NOW)
    snapshot = SimpleNamespace(rate_limits=None, max_inflight=0)
    principal = SimpleNamespace(tenant_id=live_org.tenant.pk, team_id=live_org.team.pk, key_id=live_org.api_key.pk)
    call = SimpleNamespace(principal=principal, customer="", request_id="gone", extra_headers={})

    async def cancelled_after_the_reserve() -> dict[str, int]:
        admitting = asyncio.create_task(
            admission.admission_hold(snapshot, call, budgets=budgets, tokens=10, amount=Decimal(2))
        )
        deadline = time.monotonic() + 5
        while "gone" not in counter_fields(redis_counters, key)[2]:
            assert not admitting.done() and time.monotonic() < deadline, "the reserve never held anything"
            await asyncio.sleep(0.01)
        return (await cancel_then_wait_released(admitting, redis_counters, key, "gone"))[2]

    assert asyncio.run(cancelled_after_the_reserve()) == {}
    assert counter_fields(redis_counters, key)[:2] == (0, 0)


def test_a_late_release_of_a_reserve_without_reply_leaves_the_same_requests_next_reservation(
    live_org, redis_counters, monkeypatch, settings
):
    """The first reserve meets a Redis error (its release waits for Redis), the database refuses it, and the
    request downgrades: its second reserve, under the same request id, is not what the late release takes, so the
    hard limit still holds against the next request."""
    settings.LLMOPS_BUDGET_REDIS_FAILURE = "database"
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    budgets, key = entries(live_org), counter_key(live_org)
    answers = RESERVE_SCRIPT.run
    failures = iter([RedisConnectionError("Connection reset by peer")])

    async def first_reply_lost(client, keys, args):
        if (failure := next(failures, None)) is not None:
            raise failure
        return await answers(client, keys, args)

    monkeypatch.setattr(RESERVE_SCRIPT, "run", first_reply_lost)
    # The release's first try falls after the downgrade's reserve (otherwise a race of a few ms).
    monkeypatch.setattr(reservations, "RESETTLE_FIRST_PAUSE_SECONDS", 0.3)

    async def downgraded_then_released():
        with pytest.raises(BudgetExceeded):
            await budget_reserve(budgets=budgets, amount=Decimal(6), request_id="dg", now=NOW)
        await budget_reserve(budgets=budgets, amount=Decimal(1), request_id="dg", now=NOW)
        while reservations._unknown_releases:
            await asyncio.sleep(0.05)
        held = counter_fields(redis_counters, key)[2]
        with pytest.raises(BudgetExceeded):
            await budget_reserve(budgets=budgets, amount=Decimal(5), request_id="other", now=NOW)
        return held

    assert asyncio.run(downgraded_then_released()) == {"dg": usd_to_units(Decimal(1))}


def test_a_settle_whose_caller_is_cancelled_before_it_is_sent_still_reaches_redis(live_org, redis_counters):
    """The request's task is cancelled (its client hung up) just after it started to settle: the settle is sent all
    the same, so its cost counts and its reservation goes."""
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    key = counter_key(live_org)
    cut = reserve(live_org, "2", request_id="cut")
    late = event(live_org, request_id="cut", cost="0.5")

    async def cancelled_while_settling() -> tuple[int, int, dict[str, int]]:
        settling = asyncio.create_task(reservation_settle(cut, actual=Decimal("0.5"), event=late))
        await asyncio.sleep(0)  # the settle has queued its script for the loop's next batch
        return await cancel_then_wait_released(settling, redis_counters, key, "cut")

    assert asyncio.run(cancelled_while_settling()) == (usd_to_units(Decimal("0.5")), 0, {})


def test_a_settle_that_fails_on_redis_after_its_caller_was_cancelled_still_writes_the_row_and_settles_later(
    live_org, redis_counters, monkeypatch
):
    """The client hangs up while its settle is on its way and Redis drops the connection: the request's row goes to
    the database and the settle is sent again once Redis answers, as when nobody hung up."""
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    key = counter_key(live_org)
    cut = reserve(live_org, "2", request_id="cut")
    late = event(live_org, request_id="cut", cost="0.5")
    answers = SETTLE_SCRIPT.run
    dropped = iter([True])

    async def dropped_once(client, keys, args):
        if next(dropped, False):
            await asyncio.sleep(0.05)  # the caller is cancelled meanwhile
            raise RedisConnectionError("Connection closed by server.")
        return await answers(client, keys, args)

    monkeypatch.setattr(SETTLE_SCRIPT, "run", dropped_once)

    async def cancelled_while_settling():
        settling = asyncio.create_task(reservation_settle(cut, actual=Decimal("0.5"), event=late))
        await asyncio.sleep(0.01)
        return await cancel_then_wait_released(settling, redis_counters, key, "cut")

    assert asyncio.run(cancelled_while_settling()) == (usd_to_units(Decimal("0.5")), 0, {})
    assert UsageRecord.objects.unscoped().filter(request_id="cut").count() == 1


def test_a_settle_sent_again_once_redis_answers_raises_the_thresholds_its_charge_crossed(
    live_org, redis_counters, monkeypatch
):
    """The settle that took spend past 50 % met Redis away: sent again once it answers, it raises that alert then.
    No later settle would (each starts above 50 %), and the nightly check is hours away."""
    budget = budget_create(
        tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(10), thresholds=[50, 80]
    )
    ledger(live_org, cost="4")
    crossing = reserve(live_org, "2", request_id="crossing")
    answers = SETTLE_SCRIPT.run
    dropped = iter([True])

    async def dropped_once(client, keys, args):
        if next(dropped, False):
            raise RedisConnectionError("Connection closed by server.")
        return await answers(client, keys, args)

    monkeypatch.setattr(SETTLE_SCRIPT, "run", dropped_once)

    async def settled_then_sent_again() -> None:
        await reservation_settle(
            crossing, actual=Decimal("1.5"), event=event(live_org, request_id="crossing", cost="1.5")
        )
        assert await background_drain(5) == 0

    asyncio.run(settled_then_sent_again())
    threshold_alerts_wait()

    assert budget_counter_check(budget=budget, now=NOW).counted_usd == Decimal("5.5")
    alerts = BudgetAlert.objects.unscoped().filter(budget=budget).values_list("threshold", "spent_usd")
    assert list(alerts) == [(50, Decimal("5.5"))]


def test_a_ledger_record_whose_caller_was_cancelled_while_redis_failed_goes_to_the_database(
    live_org, redis_counters, monkeypatch
):
    """A request with no budget records its row on the stream; the client hangs up while the append is on its way
    and Redis drops the connection: the row is written to the database, as when nobody hung up."""
    answers = stream.redis_command
    dropped = iter([True])

    async def dropped_once(client, *args):
        if next(dropped, False):
            await asyncio.sleep(0.05)  # the caller is cancelled meanwhile
            raise RedisConnectionError("Connection closed by server.")
        return await answers(client, *args)

    monkeypatch.setattr(stream, "redis_command", dropped_once)
    rows = UsageRecord.objects.unscoped().filter(request_id="unbudgeted")

    async def cancelled_while_appending() -> None:
        appending = asyncio.create_task(
            stream.ledger_event_append(event=event(live_org, request_id="unbudgeted", cost="0.5"))
        )
        await asyncio.sleep(0.01)
        appending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await appending
        deadline = time.monotonic() + 5
        while not await database_sync_to_async(rows.exists)() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    asyncio.run(cancelled_while_appending())
    assert rows.count() == 1


def test_a_database_reserve_whose_caller_went_away_is_given_back_once_it_commits(live_org, no_redis, monkeypatch):
    """Without Redis the reserve is a transaction in a worker thread, which a cancelled caller does not stop: once it
    commits, what it reserved is settled at nothing."""
    budget = budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    budgets = entries(live_org)
    in_thread, go_on = threading.Event(), threading.Event()
    reserve_in_thread = reservations._database_reserve

    def held_up(*args, **kwargs):
        in_thread.set()
        go_on.wait(5)
        return reserve_in_thread(*args, **kwargs)

    monkeypatch.setattr(reservations, "_database_reserve", held_up)

    def reserved_usd() -> Decimal | None:
        counters = BudgetCounter.objects.unscoped().filter(budget=budget, period_key="2026-11")
        return counters.values_list("reserved_usd", flat=True).first()

    async def cancelled_then_given_back() -> Decimal:
        reserving = asyncio.create_task(budget_reserve(budgets=budgets, amount=Decimal(2), request_id="gone", now=NOW))
        while not in_thread.is_set():
            await asyncio.sleep(0.01)
        reserving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reserving
        go_on.set()
        deadline = time.monotonic() + 5
        while (reserved := await database_sync_to_async(reserved_usd)()) != 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return reserved

    assert asyncio.run(cancelled_then_given_back()) == 0


def test_settles_racing_with_reseeds_are_counted_exactly_once(live_org, redis_counters):
    """Requests settle (appending to the ledger stream) while the counter is seeded again and again and a drainer
    moves the stream into Postgres: at the end the counter equals the ledger."""
    budget = budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(1000))
    stop = threading.Event()
    seeds = []

    def reseed():
        while not stop.is_set():
            seeds.append(budget_counters_rebuild(budget=budget, now=NOW))

    def drain_continuously():
        while not stop.is_set():
            ledger_stream_drain(client=redis_counters, consumer="test", batch_size=7)

    budgets = entries(live_org)
    costs = [Decimal(number % 7 + 1) / 100 for number in range(600)]
    events = [event(live_org, request_id=f"q{number}", cost=str(cost)) for number, cost in enumerate(costs)]

    async def requests():
        async def one(number: int):
            reservation = await budget_reserve(budgets=budgets, amount=Decimal(1), request_id=f"q{number}", now=NOW)
            await asyncio.sleep(0.001 * (number % 5))
            await reservation_settle(reservation, actual=costs[number], event=events[number])

        for start in range(0, len(costs), 60):
            await asyncio.gather(*(one(number) for number in range(start, start + 60)))

    workers = [threading.Thread(target=reseed), threading.Thread(target=drain_continuously)]
    for worker in workers:
        worker.start()
    try:
        run(requests())
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    drain(redis_counters)

    expected = sum(costs, Decimal(0))
    assert len(seeds) > 3
    check = budget_counter_check(budget=budget, now=NOW)
    assert (check.counted_usd, check.ledger_usd) == (expected, expected)
    hold = BudgetHold(entry=budgets[0], window=budget_window(period="month", zone=UTC, now=NOW))
    assert int(redis_counters.hget(hold.redis_key, "reserved")) == 0


def test_a_request_that_settles_while_the_counter_is_seeded_counts_once(live_org, redis_counters):
    """The seed is held inside its ledger query (the table locked) while a request settles: that cost reaches the
    counter through the pending hash, not twice and not never; its record is appended after the seed's boundary."""
    budget = budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(10))
    ledger(live_org, cost="1")
    budgets = entries(live_org)
    hold = BudgetHold(entry=budgets[0], window=budget_window(period="month", zone=UTC, now=NOW))
    in_flight = reserve(live_org, "2", request_id="late")
    seeded = []

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE billing_usagerecord IN ACCESS EXCLUSIVE MODE")
        seeder = threading.Thread(target=lambda: seeded.append(budget_counters_rebuild(budget=budget, now=NOW)))
        seeder.start()
        while redis_counters.hget(hold.redis_key, "seeding") is None:
            time.sleep(0.005)
        run(reservation_settle(in_flight, actual=Decimal("0.5"), event=event(live_org, request_id="late", cost="0.5")))
    seeder.join()
    drain(redis_counters)

    assert seeded == [Decimal("1.5")]
    assert budget_counter_check(budget=budget, now=NOW).counted_usd == Decimal("1.5")
    assert int(redis_counters.hget(hold.redis_key, "reserved")) == 0


def test_a_counter_that_cannot_be_seeded_answers_unavailable_and_is_let_go(live_org, redis_counters):
    """The ledger cannot be read (here: locked longer than the seeder's lock_timeout): the request is refused as
    unavailable (503), never admitted, and the counter is not left marked as being seeded."""
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(10))
    budgets = entries(live_org)
    hold = BudgetHold(entry=budgets[0], window=budget_window(period="month", zone=UTC, now=NOW))
    options = connection.settings_dict["OPTIONS"]
    previous = options.get("options")
    options["options"] = "-c lock_timeout=200"  # for the seeder thread's new connection
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("LOCK TABLE billing_usagerecord IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(BudgetUnavailable):
                reserve(live_org, "1")
    finally:
        if previous is None:
            options.pop("options")
        else:
            options["options"] = previous

    assert redis_counters.hget(hold.redis_key, "seeding") is None
    assert reserve(live_org, "1").remaining_usd == Decimal(9)


def test_the_database_backend_writes_the_ledger_row_with_the_settle(live_org, no_redis):
    budget = budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(2))
    ledger(live_org, cost="0.5")
    reservation = reserve(live_org, "1", request_id="a")
    run(reservation_settle(reservation, actual=Decimal("0.75"), event=event(live_org, request_id="a", cost="0.75")))

    counter = BudgetCounter.objects.unscoped().get(budget=budget)
    assert (counter.spent_usd, counter.reserved_usd) == (Decimal("1.25"), 0)
    assert UsageRecord.objects.unscoped().get(request_id="a").cost_usd == Decimal("0.75")
    assert budget_counter_check(budget=budget, now=NOW).agrees


@pytest.fixture
def redis_comes_and_goes(settings, redis_counters):
    """LLMOPS_BUDGET_REDIS_FAILURE "database"; the test switches Redis off with `away()` and on with `back()`. What the
    process learnt of the outage is forgotten after the test."""
    settings.LLMOPS_BUDGET_REDIS_FAILURE = "database"
    reachable = settings.REDIS_URL

    def away():
        settings.REDIS_URL = UNREACHABLE_REDIS_URL

    def back():
        settings.REDIS_URL = reachable

    yield SimpleNamespace(away=away, back=back)
    reservations._outage.since = None
    reservations._outage.settled_in_database.clear()


def test_a_database_counter_written_before_redis_counted_is_seeded_again_in_the_next_outage(
    live_org, redis_comes_and_goes
):
    """Redis went away, came back and counted spend, then went away again: the database counter of the first outage
    does not know that spend, so it is set from the ledger before it admits anything."""
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    redis_comes_and_goes.away()
    first = reserve(live_org, "1", request_id="first")
    run(reservation_settle(first, actual=Decimal(1), event=event(live_org, request_id="first", cost="1")))
    redis_comes_and_goes.back()
    second = reserve(live_org, "2", request_id="second")
    run(reservation_settle(second, actual=Decimal(2)))
    ledger(live_org, cost="2", request_id="second")  # the drainer's row
    redis_comes_and_goes.away()

    assert (first.backend, second.backend) == ("database", "redis")
    assert refusal(live_org, "2.5").spent_usd == Decimal(3)


def test_a_redis_counter_is_seeded_again_after_the_process_charged_the_database_while_redis_was_away(
    live_org, redis_comes_and_goes
):
    """Redis kept its counter through the outage (an AOF restart, or it was only out of this process's reach): that
    counter lacks what was charged in the database meanwhile, so it is set from the ledger before Redis admits again."""
    budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(5))
    first = reserve(live_org, "1", request_id="first")
    run(reservation_settle(first, actual=Decimal(1)))
    ledger(live_org, cost="1", request_id="first")  # the drainer's row
    redis_comes_and_goes.away()
    second = reserve(live_org, "2", request_id="second")
    run(reservation_settle(second, actual=Decimal(2), event=event(live_org, request_id="second", cost="2")))
    redis_comes_and_goes.back()

    assert (first.backend, second.backend) == ("redis", "database")
    assert refusal(live_org, "2.5").spent_usd == Decimal(3)
    assert reserve(live_org, "2").backend == "redis"


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_the_nightly_check_repairs_a_counter_that_disagrees(live_org, backend, settings, redis_counters):
    if backend == "database":
        settings.REDIS_URL = ""
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal(10))
    now = datetime.now(UTC)
    ledger(live_org, cost="1", created_at=now - timedelta(seconds=1))
    run(budget_reserve(budgets=entries(live_org), amount=Decimal(1), request_id="x", now=now))
    ledger(live_org, cost="2", created_at=now - timedelta(seconds=1))  # written behind the counter's back

    assert budget_counter_check(budget=budget, now=now).counted_usd == Decimal(1)
    assert budget_counters_check_task() == 1

    assert budget_counter_check(budget=budget, now=now).counted_usd == Decimal(3)
    assert budget_counters_check_task() == 0


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_shadow_evaluation_calls_are_not_spend_of_any_product_budget(live_org, backend, settings, redis_counters):
    """Evaluation calls are paid from the evaluation budget: a counter seeded from the ledger (rows and the stream's
    backlog) and the nightly check both leave them out."""
    if backend == "database":
        settings.REDIS_URL = ""
    now = datetime.now(UTC)
    ledger(live_org, cost="1", created_at=now - timedelta(seconds=1))
    ledger(live_org, cost="4", created_at=now - timedelta(seconds=1), kind=UsageKind.EVALUATION)
    if backend == "redis":
        evaluation = event(live_org, request_id="in-stream", cost="2", created_at=now, kind=UsageKind.EVALUATION)
        redis_counters.xadd(STREAM_KEY, {"event": usage_event_encode(evaluation)})
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal(3))

    reservation = run(budget_reserve(budgets=entries(live_org), amount=Decimal(2), request_id="x", now=now))

    assert reservation.remaining_usd == 0
    check = budget_counter_check(budget=budget, now=now)
    assert (check.counted_usd, check.ledger_usd) == (Decimal(1), Decimal(1))
    assert budget_counters_check_task() == 0
