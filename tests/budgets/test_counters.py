from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.budgets.index import build_budget_index
from billing.budgets.reservations import budget_reserve, reservation_settle
from billing.budgets.services import budget_counter_check, budget_counters_check, budget_counters_rebuild, budget_create
from billing.models import BudgetScope, UsageRecord
from billing.tasks import budget_counters_check as budget_counters_check_task
from tests.loops import run

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def ledger(org, *, cost: str, created_at: datetime, api_key=None):
    api_key = api_key or org.api_key
    UsageRecord.objects.create(
        request_id=f"r-{UsageRecord.objects.count()}",
        tenant=org.tenant,
        team=api_key.team,
        api_key=api_key,
        cost_usd=Decimal(cost),
        http_status=200,
        created_at=created_at,
    )


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_counters_are_rebuilt_from_the_ledger_and_then_agree(live_org, backend, settings, redis_counters):
    if backend == "database":
        settings.REDIS_URL = ""
    budget = budget_create(tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(10))
    ledger(live_org, cost="1.5", created_at=NOW - timedelta(days=1))
    ledger(live_org, cost="0.25", created_at=NOW - timedelta(hours=1))
    ledger(live_org, cost="7", created_at=datetime(2026, 10, 31, 23, tzinfo=UTC))  # last month
    ledger(live_org, cost="9", created_at=NOW, api_key=live_org.other_key)  # another team
    budgets = build_budget_index().applicable(live_org.tenant.pk, live_org.team.pk, live_org.api_key.pk, "m")

    async def one_request():
        reservation = await budget_reserve(budgets=budgets, amount=Decimal(2), request_id="x", now=NOW)
        await reservation_settle(reservation, actual=Decimal("0.5"))

    run(one_request())  # counted, but (in this test) never written to the ledger
    check = budget_counter_check(budget=budget, now=NOW)
    assert (check.counted_usd, check.ledger_usd, check.agrees) == (Decimal("0.5"), Decimal("1.75"), False)
    assert [found.budget_id for found in budget_counters_check(now=NOW)] == [budget.pk]

    assert budget_counters_rebuild(budget=budget, now=NOW) == Decimal("1.75")
    assert budget_counter_check(budget=budget, now=NOW).agrees
    assert budget_counters_check(now=NOW) == []


def test_the_nightly_task_reports_disagreeing_counters(live_org, redis_counters):
    budget_create(tenant=live_org.tenant, limit_usd=Decimal(10))
    ledger(live_org, cost="1", created_at=datetime.now(UTC) - timedelta(seconds=1))
    assert budget_counters_check_task() == 1
