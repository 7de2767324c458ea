"""A tenant's new time zone moves its budgets' windows: the next admission counts the ledger's spend in the window of
the new zone, also where the period's key (the local date) reads the same in both zones."""

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from billing.budgets.index import build_budget_index
from billing.budgets.periods import budget_window
from billing.budgets.reservations import BudgetExceeded, Reservation, budget_reserve
from billing.budgets.services import budget_create
from billing.models import BudgetPeriod
from tenants.models import Tenant
from tenants.services import tenant_update
from tests.admin.scenario import admin_url
from tests.factories import UsageRecordFactory
from tests.loops import run

# 16:00 in Berlin and 10:00 in New York: 2026-11-27 in both. Berlin's day began at 23:00 UTC the day before, New
# York's at 05:00 UTC.
NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
BERLIN_ONLY = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
BOTH_DAYS = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def reserve(org, amount: str, request_id: str) -> Reservation:
    budgets = build_budget_index(tenant_id=org.tenant.pk).applicable(
        org.tenant.pk, org.team.pk, org.api_key.pk, "acme-small"
    )
    return run(budget_reserve(budgets=budgets, amount=Decimal(amount), request_id=request_id, now=NOW))


def berlin_budget_refusing_what_its_day_spent(org) -> None:
    """A day budget of $10 in Berlin, whose day spent $9 ($8 before New York's day began): a $5 request is refused,
    its counter seeded with the $9."""
    org.tenant.time_zone = "Europe/Berlin"
    tenant_update(tenant=org.tenant)
    budget_create(tenant=org.tenant, limit_usd=Decimal("10"), period=BudgetPeriod.DAY, thresholds=[])
    UsageRecordFactory(api_key=org.api_key, cost_usd=Decimal("8"), created_at=BERLIN_ONLY)
    UsageRecordFactory(api_key=org.api_key, cost_usd=Decimal("1"), created_at=BOTH_DAYS)
    with pytest.raises(BudgetExceeded):
        reserve(org, "5", "in-berlin")


def test_the_day_keeps_its_key_across_the_zones():
    in_berlin = budget_window(period=BudgetPeriod.DAY, zone=ZoneInfo("Europe/Berlin"), now=NOW)
    in_new_york = budget_window(period=BudgetPeriod.DAY, zone=ZoneInfo("America/New_York"), now=NOW)
    assert in_berlin.key == in_new_york.key == "2026-11-27"
    assert in_berlin.start < BERLIN_ONLY < in_new_york.start < BOTH_DAYS < NOW


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_after_a_time_zone_change_the_next_admission_counts_the_new_zones_window(
    live_org, backend, settings, redis_counters
):
    if backend == "database":
        settings.REDIS_URL = ""
    berlin_budget_refusing_what_its_day_spent(live_org)

    live_org.tenant.time_zone = "America/New_York"
    tenant_update(tenant=live_org.tenant)

    # New York's 2026-11-27 spent $1 so far: $5 fits, and leaves $4.
    admitted = reserve(live_org, "5", "in-new-york")
    assert admitted.backend == backend
    assert admitted.remaining_usd == Decimal("4")


def test_a_time_zone_changed_in_the_admin_moves_the_budgets_window(live_org, redis_counters, admin_client):
    berlin_budget_refusing_what_its_day_spent(live_org)

    response = admin_client.post(
        admin_url("tenants_tenant", "change", live_org.tenant.pk),
        {"name": live_org.tenant.name, "time_zone": "America/New_York", "is_active": "on"},
    )

    assert response.status_code == 302
    assert Tenant.objects.unscoped().get(pk=live_org.tenant.pk).time_zone == "America/New_York"
    assert reserve(live_org, "5", "in-new-york").remaining_usd == Decimal("4")


def test_a_tenant_change_that_keeps_the_zone_keeps_the_budgets_version(org):
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), period=BudgetPeriod.DAY)
    org.tenant.name = "Acme Renamed"
    tenant_update(tenant=org.tenant)
    budget_after = type(budget).objects.unscoped().get(pk=budget.pk)
    assert budget_after.updated_at == budget.updated_at
