import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import redis
from django.conf import settings

from billing.budgets.index import build_budget_index, units_to_usd
from billing.budgets.periods import budget_window
from billing.budgets.reservations import (
    BudgetExceeded,
    BudgetUnavailable,
    budget_reserve,
    reservation_settle,
)
from billing.budgets.services import budget_create
from billing.models import BudgetAction, BudgetCounter, BudgetPeriod, BudgetScope
from tests.loops import run

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def entries(org, model_name="m-small"):
    return build_budget_index(tenant_id=org.tenant.pk).applicable(
        org.tenant.pk, org.team.pk, org.api_key.pk, model_name
    )


async def reserve_many(budgets, *, count: int, amount: Decimal) -> list:
    async def one(number: int):
        try:
            return await budget_reserve(budgets=budgets, amount=amount, request_id=f"req-{number}", now=NOW)
        except BudgetExceeded as refused:
            return refused

    return await asyncio.gather(*(one(number) for number in range(count)))


@pytest.mark.parametrize(
    ("period", "zone", "now", "key", "start", "end"),
    [
        # 23:30 UTC on Nov 30 is already December 1st in Auckland (UTC+13).
        (
            "month",
            "Pacific/Auckland",
            datetime(2026, 11, 30, 23, 30, tzinfo=UTC),
            "2026-12",
            (2026, 11, 30, 11),
            (2026, 12, 31, 11),
        ),
        ("month", "UTC", datetime(2026, 11, 30, 23, 30, tzinfo=UTC), "2026-11", (2026, 11, 1, 0), (2026, 12, 1, 0)),
        # 03:00 UTC on Jan 1 is still Dec 31 in New York; ISO week 53 of 2026 runs Dec 28 to Jan 3.
        (
            "day",
            "America/New_York",
            datetime(2027, 1, 1, 3, 0, tzinfo=UTC),
            "2026-12-31",
            (2026, 12, 31, 5),
            (2027, 1, 1, 5),
        ),
        (
            "week",
            "America/New_York",
            datetime(2027, 1, 1, 3, 0, tzinfo=UTC),
            "2026-W53",
            (2026, 12, 28, 5),
            (2027, 1, 4, 5),
        ),
        # Berlin leaves summer time on 2026-10-25: that day has 25 hours.
        (
            "day",
            "Europe/Berlin",
            datetime(2026, 10, 25, 12, 0, tzinfo=UTC),
            "2026-10-25",
            (2026, 10, 24, 22),
            (2026, 10, 25, 23),
        ),
    ],
)
def test_period_window_in_the_tenant_time_zone(period, zone, now, key, start, end):
    window = budget_window(period=period, zone=ZoneInfo(zone), now=now)
    assert window.key == key
    assert window.start == datetime(*start, tzinfo=UTC)
    assert window.end == datetime(*end, tzinfo=UTC)


def test_the_window_remembered_for_a_period_is_left_at_its_boundaries():
    """The last window of each period and zone is reused while it holds the moment asked about, never past it."""
    berlin = ZoneInfo("Europe/Berlin")
    last_second = datetime(2026, 10, 25, 22, 59, 59, tzinfo=UTC)
    moments = [
        (last_second, "2026-10-25"),
        (datetime(2026, 10, 24, 22, 0, tzinfo=UTC), "2026-10-25"),
        (last_second + timedelta(seconds=1), "2026-10-26"),
        (last_second, "2026-10-25"),
        (datetime(2026, 10, 24, 21, 59, 59, tzinfo=UTC), "2026-10-24"),
    ]
    assert [budget_window(period="day", zone=berlin, now=now).key for now, _ in moments] == [key for _, key in moments]
    assert budget_window(period="day", zone=ZoneInfo("UTC"), now=last_second).key == "2026-10-25"
    assert budget_window(period="day", zone=ZoneInfo("Pacific/Auckland"), now=last_second).key == "2026-10-26"
    assert budget_window(period="month", zone=berlin, now=last_second).key == "2026-10"


def test_concurrent_reserves_in_redis_never_exceed_the_limit(org, redis_counters):
    budget_create(tenant=org.tenant, scope=BudgetScope.TEAM, team=org.team, limit_usd=Decimal("50"))
    results = run(reserve_many(entries(org), count=300, amount=Decimal("1")))
    granted = [result for result in results if not isinstance(result, BudgetExceeded)]
    assert len(granted) == 50
    assert all(result.backend == "redis" for result in granted)
    assert min(result.remaining_usd for result in granted) == 0
    counter = redis_counters.hgetall(f"llmops:budget:{org.team.budgets.get().pk}:2026-11")
    assert int(counter[b"reserved"]) == 50 * 10**10


def test_concurrent_reserves_in_the_database_never_exceed_the_limit(live_org, no_redis):
    budget = budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal("40"))
    results = run(reserve_many(entries(live_org), count=200, amount=Decimal("0.5")))
    granted = [result for result in results if not isinstance(result, BudgetExceeded)]
    assert len(granted) == 80
    assert {result.backend for result in granted} == {"database"}
    counter = BudgetCounter.objects.unscoped().get(budget=budget, period_key="2026-11")
    assert counter.reserved_usd == Decimal("40")


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_settle_replaces_the_reservation_with_the_actual_cost(live_org, backend, settings, redis_counters):
    if backend == "database":
        settings.REDIS_URL = ""
    budget_create(tenant=live_org.tenant, limit_usd=Decimal("10"), thresholds=[])

    budgets = entries(live_org)

    async def scenario():
        first = await budget_reserve(budgets=budgets, amount=Decimal("6"), request_id="a", now=NOW)
        assert first.remaining_usd == Decimal("4")
        with pytest.raises(BudgetExceeded):
            await budget_reserve(budgets=budgets, amount=Decimal("6"), request_id="b", now=NOW)
        # The call cost far less than its worst case: the freed room takes the next request.
        assert await reservation_settle(first, actual=Decimal("1.25")) == Decimal("8.75")
        second = await budget_reserve(budgets=budgets, amount=Decimal("6"), request_id="c", now=NOW)
        # An upstream failure that cost nothing settles at 0.
        assert await reservation_settle(second, actual=Decimal(0)) == Decimal("8.75")
        with pytest.raises(RuntimeError):
            await reservation_settle(second, actual=Decimal(0))

    run(scenario())


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_a_chains_model_budgets_are_released_and_only_the_served_models_is_charged(
    live_org, backend, settings, redis_counters
):
    if backend == "database":
        settings.REDIS_URL = ""
    tenant = live_org.tenant
    everyone = budget_create(tenant=tenant, limit_usd=Decimal("10"), thresholds=[])
    primary = budget_create(tenant=tenant, scope="tenant_model", model_name="acme-large", limit_usd=Decimal("10"))
    fallback = budget_create(tenant=tenant, scope="tenant_model", model_name="acme-small", limit_usd=Decimal("10"))
    index = build_budget_index(tenant_id=tenant.pk)
    budgets = index.for_chain(tenant.pk, live_org.team.pk, live_org.api_key.pk, ["acme-large", "acme-small"])
    assert [entry.budget_id for entry in budgets] == [everyone.pk, primary.pk, fallback.pk]

    async def scenario():
        held = await budget_reserve(budgets=budgets, amount=Decimal("6"), request_id="a", now=NOW)
        return await reservation_settle(held, actual=Decimal("1.25"), served_model="acme-small")

    assert run(scenario()) == Decimal("8.75")
    counted = {counter.budget_id: counter for counter in _counters(backend, [everyone, primary, fallback])}
    assert {pk: (c.spent_usd, c.reserved_usd) for pk, c in counted.items()} == {
        everyone.pk: (Decimal("1.25"), 0),
        primary.pk: (0, 0),
        fallback.pk: (Decimal("1.25"), 0),
    }


def _counters(backend, budgets):
    """Each budget's counter of the test's month, as BudgetCounter rows (Redis hashes read into unsaved ones)."""
    if backend == "database":
        return BudgetCounter.objects.unscoped().filter(budget__in=budgets, period_key="2026-11")
    client = redis.Redis.from_url(settings.REDIS_URL)
    counters = []
    for budget in budgets:
        spent, reserved = client.hmget(f"llmops:budget:{budget.pk}:2026-11", "spent", "reserved")
        counters.append(
            BudgetCounter(
                budget_id=budget.pk, spent_usd=units_to_usd(int(spent)), reserved_usd=units_to_usd(int(reserved))
            )
        )
    return counters


def test_every_budget_must_pass_and_notify_budgets_never_block(org, redis_counters):
    budget_create(tenant=org.tenant, limit_usd=Decimal("100"))
    team_budget = budget_create(
        tenant=org.tenant, scope=BudgetScope.TEAM, team=org.team, limit_usd=Decimal("3"), period=BudgetPeriod.DAY
    )
    budget_create(
        tenant=org.tenant, scope=BudgetScope.KEY, api_key=org.api_key, limit_usd=Decimal("1"), action="notify"
    )
    budget_create(tenant=org.tenant, scope=BudgetScope.KEY, api_key=org.other_key, limit_usd=Decimal("0.01"))

    budgets = entries(org)
    assert len(budgets) == 3  # the other key's budget does not apply

    async def scenario():
        first = await budget_reserve(budgets=budgets, amount=Decimal("2"), request_id="a", now=NOW)
        # Over the notify budget already, yet admitted; the tightest enforced room is the team's.
        assert first.remaining_usd == Decimal(0)
        with pytest.raises(BudgetExceeded) as refused:
            await budget_reserve(budgets=budgets, amount=Decimal("2"), request_id="b", now=NOW)
        return refused.value

    refused = run(scenario())
    assert refused.budget_id == team_budget.pk
    assert refused.retry_after_seconds == 9 * 3600  # until midnight UTC
    assert refused.downgrade is False


def test_a_downgrade_budget_says_so_when_it_refuses(org, redis_counters):
    budget_create(tenant=org.tenant, limit_usd=Decimal("1"), action=BudgetAction.DOWNGRADE)
    with pytest.raises(BudgetExceeded) as refused:
        run(budget_reserve(budgets=entries(org), amount=Decimal("2"), request_id="a", now=NOW))
    assert refused.value.downgrade is True


def test_unreachable_redis_fails_closed_by_default(org, unreachable_redis):
    budget_create(tenant=org.tenant, limit_usd=Decimal("100"))
    with pytest.raises(BudgetUnavailable):
        run(budget_reserve(budgets=entries(org), amount=Decimal("1"), request_id="a", now=NOW))


def test_unreachable_redis_lets_notify_only_budgets_pass_uncounted(org, unreachable_redis):
    budget_create(tenant=org.tenant, limit_usd=Decimal("100"), action=BudgetAction.NOTIFY)
    reservation = run(budget_reserve(budgets=entries(org), amount=Decimal("1"), request_id="a", now=NOW))
    assert reservation.backend == "none"


def test_unreachable_redis_uses_the_database_when_configured(live_org, unreachable_redis, settings):
    settings.LLMOPS_BUDGET_REDIS_FAILURE = "database"
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal("1.5"))
    results = run(reserve_many(entries(live_org), count=5, amount=Decimal("1")))
    assert [result.backend for result in results if not isinstance(result, BudgetExceeded)] == ["database"]
    assert BudgetCounter.objects.unscoped().get(budget=budget).reserved_usd == Decimal("1")


def test_no_budget_means_no_reservation_and_no_header(org, redis_counters):
    reservation = run(budget_reserve(budgets=[], amount=Decimal("1"), request_id="a", now=NOW))
    assert reservation.remaining_usd is None
