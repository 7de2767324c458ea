"""The evaluation budget: every evaluation call reserves its worst case first, so concurrent evaluations never commit
more than the month's budget, and what they cost is settled on the month they were made in."""

import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection

from billing.evaluation.budget import evaluation_budget_reserve, evaluation_budget_settle, evaluation_month
from billing.models import EvaluationSettings, EvaluationSpend
from tests.factories import TenantFactory

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
CALL = Decimal("0.15")


@pytest.fixture
def tenant(transactional_db):
    tenant = TenantFactory(slug="acme")
    EvaluationSettings.objects.create(tenant=tenant, enabled=True, monthly_budget_usd=Decimal("1.00"))
    return tenant


def spend(tenant, month=NOW) -> EvaluationSpend:
    return EvaluationSpend.objects.for_tenant(tenant).get(month=evaluation_month(month))


def test_concurrent_evaluations_never_commit_more_than_the_budget(tenant):
    admitted: list = []
    start = threading.Barrier(8)

    def evaluate():
        start.wait()
        try:
            for _ in range(10):
                hold = evaluation_budget_reserve(tenant_id=tenant.pk, amount=CALL, now=NOW)
                if hold is not None:
                    admitted.append(hold)
                    evaluation_budget_settle(hold=hold, actual=CALL)
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Six calls of 0.15 fit in 1.00, a seventh would not, whatever the interleaving.
    assert len(admitted) == 6
    month = spend(tenant)
    assert (month.spent_usd, month.reserved_usd, month.refused) == (Decimal("0.90"), 0, 74)


def test_a_reservation_in_flight_holds_its_worst_case_until_settled_with_what_it_cost(tenant):
    first = evaluation_budget_reserve(tenant_id=tenant.pk, amount=Decimal("0.60"), now=NOW)

    assert evaluation_budget_reserve(tenant_id=tenant.pk, amount=Decimal("0.50"), now=NOW) is None
    evaluation_budget_settle(hold=first, actual=Decimal("0.20"))
    second = evaluation_budget_reserve(tenant_id=tenant.pk, amount=Decimal("0.50"), now=NOW)

    assert second is not None
    month = spend(tenant)
    assert (month.spent_usd, month.reserved_usd, month.refused) == (Decimal("0.20"), Decimal("0.50"), 1)


def test_a_call_settles_on_the_month_it_reserved_in_and_a_new_month_starts_afresh(tenant):
    hold = evaluation_budget_reserve(tenant_id=tenant.pk, amount=Decimal("0.90"), now=NOW)
    next_month = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)

    assert evaluation_budget_reserve(tenant_id=tenant.pk, amount=Decimal("0.90"), now=next_month) is not None
    evaluation_budget_settle(hold=hold, actual=Decimal("0.80"))

    assert (spend(tenant).spent_usd, spend(tenant).reserved_usd) == (Decimal("0.80"), 0)
    assert spend(tenant, next_month).reserved_usd == Decimal("0.90")


def test_nothing_is_reserved_for_a_tenant_that_stopped_evaluating(tenant):
    EvaluationSettings.objects.for_tenant(tenant).update(enabled=False)

    assert evaluation_budget_reserve(tenant_id=tenant.pk, amount=Decimal("0.01"), now=NOW) is None
    assert spend(tenant).refused == 1
