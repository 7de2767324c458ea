"""Customer-scope budgets and rate limits: one row holds each end customer to its own limit, on counters named by
the customer that expire with their period, seeded from that customer's ledger rows only, never another tenant's."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from billing.alerts.tasks import budget_threshold_alert
from billing.budgets.counters import COUNTER_GRACE, BudgetHold
from billing.budgets.index import build_budget_index, build_rate_limit_index
from billing.budgets.periods import budget_window
from billing.budgets.reservations import BudgetExceeded, budget_reserve, reservation_settle
from billing.budgets.services import (
    budget_counter_check,
    budget_counters_check,
    budget_counters_rebuild,
    budget_create,
    budget_update,
)
from billing.budgets.thresholds import threshold_alerts_wait
from billing.ledger.events import UsageEvent
from billing.ledger.stream import STREAM_KEY, usage_event_encode
from billing.models import BudgetAlert, BudgetCounter, RateLimitScope, UsageRecord
from billing.ratelimits import rate_limit_check, rate_limit_create
from tests.budgets.conftest import make_org
from tests.loops import run

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def entries(org, customer: str):
    index = build_budget_index(tenant_id=org.tenant.pk)
    return index.applicable(org.tenant.pk, org.team.pk, org.api_key.pk, "m", customer)


def reserve(org, customer: str, amount: str, request_id: str = "x", now: datetime = NOW):
    budgets = entries(org, customer)
    return run(
        budget_reserve(budgets=budgets, amount=Decimal(amount), request_id=request_id, now=now, customer=customer)
    )


def refused(org, customer: str, amount: str) -> BudgetExceeded:
    with pytest.raises(BudgetExceeded) as refusal:
        reserve(org, customer, amount)
    return refusal.value


def spend(org, customer: str, cost: str, request_id: str, created_at: datetime = NOW) -> None:
    UsageRecord.objects.create(
        request_id=request_id,
        tenant=org.tenant,
        team=org.team,
        api_key=org.api_key,
        customer=customer,
        cost_usd=Decimal(cost),
        http_status=200,
        created_at=created_at,
    )


def settle(org, reservation, customer: str, cost: str, created_at: datetime = NOW) -> None:
    event = UsageEvent(
        request_id=reservation.request_id,
        tenant_id=org.tenant.pk,
        team_id=org.team.pk,
        api_key_id=org.api_key.pk,
        customer=customer,
        created_at=created_at,
        http_status=200,
        cost_usd=Decimal(cost),
    )
    run(reservation_settle(reservation, actual=Decimal(cost), event=event))


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_each_customer_is_held_to_its_own_limit_from_its_own_spend(live_org, backend, settings, redis_counters):
    if backend == "database":
        settings.REDIS_URL = ""
    spend(live_org, "alice", "3", "alice-earlier")
    spend(live_org, "bob", "0.5", "bob-earlier")
    spend(live_org, "", "100", "no-customer")
    budget_create(tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(4))

    alice = refused(live_org, "alice", "2")
    bob = reserve(live_org, "bob", "3", request_id="bob-now")

    assert (alice.spent_usd, alice.remaining_usd, alice.customer) == (Decimal(3), Decimal(1), "alice")
    assert "Budget" in str(alice) and "customer 'alice'" in str(alice)
    assert bob.remaining_usd == Decimal("0.5")
    # A request without a customer is held to no customer's budget.
    assert entries(live_org, "") == []
    assert reserve(live_org, "", "1000").holds == ()


def test_a_customers_counter_expires_with_its_period(live_org, redis_counters):
    budget = budget_create(tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(4))
    now = datetime.now(UTC)
    reservation = reserve(live_org, "alice", "1", now=now)
    settle(live_org, reservation, "alice", "1", created_at=now)

    (key,) = [key for key in redis_counters.scan_iter(f"llmops:budget:{budget.pk}:*") if b":pending" not in key]
    window = budget_window(period="day", zone=UTC, now=now)
    assert key.decode() == BudgetHold(entry=entries(live_org, "alice")[0], window=window, customer="alice").redis_key
    assert b"alice" not in key  # the customer's id is digested: any characters, one length
    expected = (window.end + COUNTER_GRACE - now).total_seconds()
    assert expected - 5 <= redis_counters.ttl(key) <= expected
    assert budget_counter_check(budget=budget, now=now, customer="alice").counted_usd == Decimal(1)


def test_alice_of_one_tenant_is_not_alice_of_another(live_org, redis_counters):
    other = make_org("globex")
    for org in (live_org, other):
        budget_create(tenant=org.tenant, scope="customer", period="month", limit_usd=Decimal(5))
    spend(other, "alice", "4.5", "globex-alice")
    redis_counters.xadd(
        STREAM_KEY,
        {"event": usage_event_encode(UsageEvent(
            request_id="globex-backlog", tenant_id=other.tenant.pk, team_id=other.team.pk,
            api_key_id=other.api_key.pk, customer="alice", created_at=NOW, http_status=200, cost_usd=Decimal("0.5"),
        ))},
    )  # fmt: skip

    assert reserve(live_org, "alice", "5").remaining_usd == 0
    assert refused(other, "alice", "0.01").spent_usd == Decimal(5)


def test_a_customers_own_budget_replaces_the_default_of_its_period_only(live_org, redis_counters):
    budget_create(tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(1))
    budget_create(tenant=live_org.tenant, scope="customer", period="month", limit_usd=Decimal(20))
    vip = budget_create(tenant=live_org.tenant, scope="customer", customer="vip", period="day", limit_usd=Decimal(10))

    vip_budgets = entries(live_org, "vip")

    assert sorted((entry.period, entry.limit_usd) for entry in vip_budgets) == [
        ("day", Decimal(10)),
        ("month", Decimal(20)),
    ]
    assert reserve(live_org, "vip", "5").remaining_usd == Decimal(5)
    assert refused(live_org, "alice", "5").limit_usd == Decimal(1)
    assert str(vip) == f"{live_org.tenant.slug} customer vip day $10"


def test_the_nightly_check_and_a_rebuild_leave_a_customer_with_an_own_budget_off_the_default(live_org, redis_counters):
    """As on the request path: a VIP spending their own budget raises no alert of the default for each customer (which
    would use up its thresholds for the period), and has no counter of it rebuilt; a default of another period holds
    them still."""
    default = budget_create(tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(100))
    monthly = budget_create(
        tenant=live_org.tenant, scope="customer", period="month", limit_usd=Decimal(100_000), thresholds=[1]
    )
    own = dict(customer="vip", period="day", limit_usd=Decimal(10_000), thresholds=[50])
    vip = budget_create(tenant=live_org.tenant, scope="customer", **own)
    now = datetime.now(UTC)
    spend(live_org, "vip", "5000", "vip-1", created_at=now)
    spend(live_org, "alice", "10", "alice-1", created_at=now)

    assert budget_counters_rebuild(budget=default, now=now) == Decimal(10)
    budget_counters_check(now=now)
    threshold_alerts_wait()

    alerts = BudgetAlert.objects.unscoped().values_list("budget_id", "threshold", "customer")
    assert set(alerts) == {(vip.pk, 50, "vip"), (monthly.pk, 1, "vip")}
    # Alice's crossing of the default's thresholds is hers to raise.
    spend(live_org, "alice", "45", "alice-2", created_at=now)
    budget_counters_check(now=now)
    assert set(alerts.filter(budget=default)) == {(default.pk, 50, "alice")}
    # Without an active budget of their own, the VIP is the default's again.
    budget_update(budget=vip, is_active=False)
    assert budget_counters_rebuild(budget=default, now=now) == Decimal(5055)


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_the_nightly_check_compares_each_customers_counter(live_org, backend, settings, redis_counters):
    """Screened with one grouped query and a counter read per thousand customers, then checked exactly."""
    if backend == "database":
        settings.REDIS_URL = ""
    budget = budget_create(tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(9))
    now = datetime.now(UTC)
    for customer in ("alice", "bob"):
        reservation = reserve(live_org, customer, "1", request_id=f"{customer}-1", now=now)
        settle(live_org, reservation, customer, "1", created_at=now)
    spend(live_org, "bob", "2", "bob-unseen", created_at=now)  # spend the counter never saw

    wrong = budget_counters_check(now=now)

    assert [(check.budget_id, check.customer) for check in wrong] == [(budget.pk, "bob")]
    assert budget_counter_check(budget=budget, now=now, customer="bob").counted_usd == Decimal(3)


def test_without_redis_each_customer_has_its_own_counter_row(live_org, settings):
    settings.REDIS_URL = ""
    budget_create(tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(4))

    reserve(live_org, "alice", "1", request_id="a")
    reserve(live_org, "bob", "2", request_id="b")

    rows = BudgetCounter.objects.unscoped().order_by("customer").values_list("customer", "reserved_usd")
    assert list(rows) == [("alice", Decimal(1)), ("bob", Decimal(2))]


def test_the_nightly_check_deletes_customers_database_counters_of_ended_periods(live_org, settings):
    """Without Redis a counter row is made per customer and period; the nightly check removes those of periods that
    have ended, unless a reservation is still open on one."""
    settings.REDIS_URL = ""
    budget = budget_create(tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(9))
    yesterday = NOW - timedelta(days=1)
    for customer in ("alice", "bob"):
        reserve(live_org, customer, "1", request_id=f"{customer}-old", now=yesterday)
    # Their requests ended (settled or released): nothing reserved is left on their counters.
    BudgetCounter.objects.unscoped().filter(customer__in=["alice", "bob"]).update(reserved_usd=0)
    reserve(live_org, "carol", "1", request_id="carol-now", now=NOW)
    reserve(live_org, "dave", "1", request_id="dave-old", now=yesterday)  # still in flight

    budget_counters_check(now=NOW)

    left = BudgetCounter.objects.unscoped().filter(budget=budget).order_by("customer")
    assert [(row.customer, row.period_key) for row in left] == [
        ("carol", f"{NOW:%Y-%m-%d}"),
        ("dave", f"{yesterday:%Y-%m-%d}"),
    ]


def test_a_customer_budget_alerts_once_per_threshold_for_the_first_customer(live_org):
    budget = budget_create(
        tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(10), thresholds=[50, 100]
    )

    budget_threshold_alert(budget.pk, "2026-11-27", 50, 6 * 10**10, "alice")
    budget_threshold_alert(budget.pk, "2026-11-27", 50, 7 * 10**10, "bob")

    assert list(BudgetAlert.objects.unscoped().values_list("threshold", "customer")) == [(50, "alice")]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"scope": "tenant", "customer": "alice"}, "customer"),
        ({"scope": "customer", "customer": "x" * 257}, "customer"),
        ({"scope": "customer", "customer": "bad\x00id"}, "customer"),
        ({"scope": "customer", "customer": " alice"}, "customer"),
    ],
)
def test_a_budget_naming_a_customer_wrongly_is_refused(org, fields, field):
    with pytest.raises(ValidationError) as refusal:
        budget_create(tenant=org.tenant, period="day", limit_usd=Decimal(1), **fields)
    assert field in refusal.value.message_dict


def test_customer_rate_limits_count_each_customer_apart(live_org, redis_counters):
    rate_limit_create(tenant=live_org.tenant, scope=RateLimitScope.CUSTOMER, requests_per_minute=1)
    rate_limit_create(tenant=live_org.tenant, scope=RateLimitScope.CUSTOMER, customer="vip", requests_per_minute=2)
    limits = build_rate_limit_index(tenant_id=live_org.tenant.pk)
    now = datetime.now(UTC)

    def allowed(customer: str) -> bool:
        check = rate_limit_check(
            limits=limits, key_id=live_org.api_key.pk, team_id=live_org.team.pk, tokens=1, now=now, customer=customer
        )
        return run(check).allowed

    assert [allowed("alice"), allowed("alice"), allowed("bob")] == [True, False, True]
    assert [allowed("vip"), allowed("vip"), allowed("vip")] == [True, True, False]
    assert all(allowed("") for _ in range(5))
    keys = list(redis_counters.scan_iter("llmops:rl:customer:*"))
    assert len(keys) == 6  # requests and tokens of alice, bob and vip
    assert all(0 < redis_counters.ttl(key) <= 120 for key in keys)


def test_a_second_default_customer_rate_limit_is_refused(org):
    rate_limit_create(tenant=org.tenant, scope=RateLimitScope.CUSTOMER, requests_per_minute=1)
    with pytest.raises(ValidationError):
        rate_limit_create(tenant=org.tenant, scope=RateLimitScope.CUSTOMER, tokens_per_minute=100)
    with pytest.raises(ValidationError):
        rate_limit_create(tenant=org.tenant, scope=RateLimitScope.CUSTOMER, team=org.team, requests_per_minute=1)


def test_each_customer_has_a_counter_of_its_own_in_each_period(live_org):
    budget = budget_create(tenant=live_org.tenant, scope="customer", period="day", limit_usd=Decimal(1))
    entry = entries(live_org, "alice")[0]
    today, tomorrow = (budget_window(period="day", zone=UTC, now=NOW + timedelta(days=d)) for d in (0, 1))

    keys = {BudgetHold(entry=entry, window=w, customer=c).redis_key for w in (today, tomorrow) for c in ("a", "b")}

    assert len(keys) == 4
    assert all(key.startswith(f"llmops:budget:{budget.pk}:c:") for key in keys)
