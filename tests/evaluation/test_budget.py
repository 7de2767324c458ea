"""The evaluation budget: every evaluation reserves the worst case of its calls first, as a hold, so concurrent
evaluations never commit more than the month's budget; what they cost is settled on the month they were made in; the
hold is the evaluation's claim; and a hold its worker never settled is given back once past its bound."""

import itertools
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from billing.evaluation.budget import (
    EXHAUSTED_ACTOR,
    EvaluationClaimed,
    evaluation_budget_reserve,
    evaluation_budget_settle,
    evaluation_hold_end,
    evaluation_holds_release_expired,
    evaluation_month,
)
from billing.evaluation.tasks import evaluation_holds_release_task
from billing.models import EvaluationHold, EvaluationSettings, EvaluationSpend, ShadowEvaluation
from tenants.models import AuditEvent
from tests.factories import TenantFactory

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
CALL = Decimal("0.15")
HOLD_SECONDS = 180.0
request_ids = (f"req_{n}" for n in itertools.count())


@pytest.fixture
def tenant(transactional_db):
    tenant = TenantFactory(slug="acme")
    EvaluationSettings.objects.create(tenant=tenant, enabled=True, monthly_budget_usd=Decimal("1.00"))
    return tenant


def spend(tenant, month=NOW) -> EvaluationSpend:
    return EvaluationSpend.objects.for_tenant(tenant).get(month=evaluation_month(month))


def reserve(tenant, amount, *, now=NOW, request_id=None, lever="routing") -> EvaluationHold | None:
    return evaluation_budget_reserve(
        tenant_id=tenant.pk,
        request_id=request_id or next(request_ids),
        lever=lever,
        amount=Decimal(amount),
        now=now,
        hold_seconds=HOLD_SECONDS,
    )


def settled(hold: EvaluationHold, actual) -> None:
    evaluation_budget_settle(hold=hold, amount=hold.amount_usd, actual=Decimal(actual))
    evaluation_hold_end(hold=hold)


def test_concurrent_evaluations_never_commit_more_than_the_budget(tenant):
    admitted: list = []
    start = threading.Barrier(8)

    def evaluate():
        start.wait()
        try:
            for _ in range(10):
                hold = reserve(tenant, CALL)
                if hold is not None:
                    admitted.append(hold)
                    settled(hold, CALL)
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
    assert not EvaluationHold.objects.for_tenant(tenant).exists()


def test_a_hold_in_flight_keeps_its_worst_case_until_settled_with_what_it_cost(tenant):
    first = reserve(tenant, "0.60")

    assert reserve(tenant, "0.50") is None
    settled(first, "0.20")
    second = reserve(tenant, "0.50")

    assert second is not None
    month = spend(tenant)
    assert (month.spent_usd, month.reserved_usd, month.refused) == (Decimal("0.20"), Decimal("0.50"), 1)


def test_each_call_settles_its_own_part_and_the_end_gives_back_the_rest(tenant):
    """Reference and judge reserved together: the reference settles its part, the judge never ran."""
    hold = reserve(tenant, "0.70")

    evaluation_budget_settle(hold=hold, amount=Decimal("0.40"), actual=Decimal("0.05"))
    assert (spend(tenant).spent_usd, spend(tenant).reserved_usd) == (Decimal("0.05"), Decimal("0.30"))
    evaluation_hold_end(hold=hold)

    assert (spend(tenant).spent_usd, spend(tenant).reserved_usd) == (Decimal("0.05"), 0)
    assert not EvaluationHold.objects.for_tenant(tenant).exists()


def test_a_call_settles_on_the_month_it_reserved_in_and_a_new_month_starts_afresh(tenant):
    hold = reserve(tenant, "0.90")
    next_month = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)

    assert reserve(tenant, "0.90", now=next_month) is not None
    settled(hold, "0.80")

    assert (spend(tenant).spent_usd, spend(tenant).reserved_usd) == (Decimal("0.80"), 0)
    assert spend(tenant, next_month).reserved_usd == Decimal("0.90")


def test_nothing_is_reserved_for_a_tenant_that_stopped_evaluating(tenant):
    EvaluationSettings.objects.for_tenant(tenant).update(enabled=False)

    assert reserve(tenant, "0.01") is None
    assert spend(tenant).refused == 1


def test_the_hold_claims_the_evaluation_another_run_pays_nothing(tenant):
    hold = reserve(tenant, "0.30", request_id="req_once")

    with pytest.raises(EvaluationClaimed):
        reserve(tenant, "0.30", request_id="req_once")
    # Another lever of the same request is an evaluation of its own.
    assert reserve(tenant, "0.30", request_id="req_once", lever="compression") is not None
    ShadowEvaluation.objects.create(
        tenant=tenant,
        request_id="req_once",
        lever="routing",
        served_model="small",
        reference_model="large",
        method="exact",
        agrees=True,
        created_at=NOW,
    )
    settled(hold, "0.10")
    # Its verdict recorded and its hold ended: still claimed.
    with pytest.raises(EvaluationClaimed):
        reserve(tenant, "0.30", request_id="req_once")

    assert spend(tenant).reserved_usd == Decimal("0.30")
    assert (spend(tenant).spent_usd, spend(tenant).refused) == (Decimal("0.10"), 0)


def test_a_hold_its_worker_never_settled_is_given_back_once_past_its_bound(tenant):
    left = reserve(tenant, "0.40")
    running = reserve(tenant, "0.30", now=NOW + timedelta(seconds=HOLD_SECONDS))
    after_bound = NOW + timedelta(seconds=HOLD_SECONDS + 1)

    assert evaluation_holds_release_expired(now=NOW + timedelta(seconds=HOLD_SECONDS - 1)) == 0
    assert evaluation_holds_release_expired(now=after_bound) == 1

    assert list(EvaluationHold.objects.for_tenant(tenant)) == [running]
    month = spend(tenant)
    assert (month.reserved_usd, month.spent_usd, month.released) == (Decimal("0.30"), 0, 1)
    # Its worker was only slow: what its call cost still counts, and nothing is given back twice.
    evaluation_budget_settle(hold=left, amount=left.amount_usd, actual=Decimal("0.05"))
    evaluation_hold_end(hold=left)
    month = spend(tenant)
    assert (month.reserved_usd, month.spent_usd) == (Decimal("0.30"), Decimal("0.05"))


def test_the_beat_task_releases_expired_holds_of_every_tenant(tenant):
    other = TenantFactory(slug="globex")
    EvaluationSettings.objects.create(tenant=other, enabled=True, monthly_budget_usd=Decimal("1.00"))
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    reserve(tenant, "0.20", now=long_ago)
    reserve(other, "0.20", now=long_ago)

    assert evaluation_holds_release_task() == 2

    assert not EvaluationHold.objects.unscoped().exists()
    assert [spend(t, long_ago).released for t in (tenant, other)] == [1, 1]


def test_a_month_whose_budget_cannot_cover_its_cheapest_evaluation_pauses_sampling_until_the_next(tenant):
    settings = EvaluationSettings.objects.for_tenant(tenant).get()
    settled(reserve(tenant, "0.30"), "0.30")
    settled(reserve(tenant, "0.40"), "0.40")

    # 0.30 left: an evaluation of 0.40 is refused, but one like the cheapest reserved (0.30) still fits.
    assert reserve(tenant, "0.40") is None
    settings.refresh_from_db()
    assert settings.exhausted_until is None
    settled(reserve(tenant, "0.25"), "0.25")
    # 0.05 left, less than the cheapest evaluation of the month (0.25): the month is spent.
    assert reserve(tenant, "0.10") is None
    assert reserve(tenant, "0.10") is None

    settings.refresh_from_db()
    assert settings.exhausted_until == datetime(2027, 1, 1, tzinfo=UTC)
    # Marked once, by name, in the audit log.
    assert AuditEvent.objects.for_tenant(tenant).filter(actor_name=EXHAUSTED_ACTOR).count() == 1
    assert spend(tenant).refused == 3


def test_a_first_evaluation_too_large_for_the_whole_budget_pauses_nothing(tenant):
    assert reserve(tenant, "2.00") is None

    assert EvaluationSettings.objects.for_tenant(tenant).get().exhausted_until is None
