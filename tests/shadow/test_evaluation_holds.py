"""An evaluation's hold on the evaluation budget, as the worker takes and ends it around real calls to the mock: both
calls' worst cases reserved before the first, nothing left reserved whatever the calls do, nothing paid twice for
one sample, and an evaluation cut off at its bound."""

from decimal import Decimal

import pytest
from django.utils import timezone

from billing.evaluation.budget import evaluation_budget_reserve
from billing.models import EvaluationHold, EvaluationSpend, ShadowEvaluation, UsageKind, UsageRecord
from llmops.gateway.shadow import services
from llmops.gateway.shadow.samples import sample_seal
from llmops.gateway.shadow.tasks import shadow_evaluate_task
from routing import upstream
from tests.conftest import LARGE_PRICES
from tests.factories import ModelFactory
from tests.shadow.conftest import evaluation_on, sample_of


def month_of(setup) -> EvaluationSpend:
    return EvaluationSpend.objects.for_tenant(setup.tenant).get()


def evaluation_rows(setup) -> list[UsageRecord]:
    return list(UsageRecord.objects.for_tenant(setup.tenant).filter(kind=UsageKind.EVALUATION))


@pytest.fixture
def dear_judge(acme):
    """A judge dearer than the reference's whole call: what the judge may cost decides whether the evaluation fits."""
    judge = ModelFactory(
        name="acme-judge",
        provider=acme.small.provider,
        upstream_name="mock-judge",
        input_price_per_million=LARGE_PRICES[0],
        cached_input_price_per_million=LARGE_PRICES[1],
        output_price_per_million=LARGE_PRICES[2],
    )
    acme.tenant.model_access.allowed_models.add(judge)
    return judge


def test_the_judge_s_worst_case_is_reserved_with_the_reference_s_before_either_is_called(
    acme, dear_judge, mock_upstream, evaluated
):
    """A budget that covers the reference call and not the judge's: nothing is called, rather than a reference paid
    for with no verdict."""
    evaluation_on(acme.tenant, budget="0.001", judge_model=dear_judge)
    calls_before = mock_upstream.app.requests_served

    shadow_evaluate_task(sample_seal(sample_of(acme, levers={"routing": acme.large.name}, task_type="summarization")))
    evaluated()

    assert mock_upstream.app.requests_served == calls_before
    assert evaluation_rows(acme) == []
    month = month_of(acme)
    assert (month.refused, month.spent_usd, month.reserved_usd) == (1, 0, 0)


def test_with_room_for_both_the_reference_and_the_judge_are_settled_and_the_hold_ends(acme, dear_judge, evaluated):
    evaluation_on(acme.tenant, budget="1", judge_model=dear_judge)

    shadow_evaluate_task(sample_seal(sample_of(acme, levers={"routing": acme.large.name}, task_type="summarization")))
    evaluated()

    (evaluation,) = ShadowEvaluation.objects.for_tenant(acme.tenant)
    rows = evaluation_rows(acme)
    assert sorted(row.served_model for row in rows) == sorted([acme.large.name, dear_judge.name])
    month = month_of(acme)
    assert month.spent_usd == sum(row.cost_usd for row in rows) == evaluation.cost_usd > 0
    assert (month.reserved_usd, month.refused) == (0, 0)
    assert not EvaluationHold.objects.for_tenant(acme.tenant).exists()


class LedgerDown(Exception):
    pass


@pytest.mark.parametrize("fault", ["reference call", "ledger write"])
def test_nothing_stays_reserved_when_a_call_or_its_ledger_row_raises(acme, evaluated, monkeypatch, fault):
    """A fault of our own, not a provider's failure: the task fails, and its hold still ends."""
    evaluation_on(acme.tenant)

    async def failing(*args, **kwargs):
        raise LedgerDown(fault)

    if fault == "reference call":
        monkeypatch.setattr(upstream, "chat_completion", failing)
    else:
        monkeypatch.setattr(services, "record_usage", failing)

    with pytest.raises(LedgerDown):
        shadow_evaluate_task(sample_seal(sample_of(acme, levers={"routing": acme.large.name})))
    evaluated()

    month = month_of(acme)
    assert month.reserved_usd == 0
    assert not EvaluationHold.objects.for_tenant(acme.tenant).exists()
    if fault == "ledger write":
        # The call was made and settled before its ledger row failed to be written: its cost counts.
        assert month.spent_usd > 0


def test_a_sample_another_run_holds_is_not_paid_for_again(acme, mock_upstream, evaluated):
    """A redelivered task, or a manual re-run, while the first run's calls are in flight."""
    evaluation_on(acme.tenant)
    sample = sample_of(acme, levers={"routing": acme.large.name})
    evaluation_budget_reserve(
        tenant_id=acme.tenant.pk,
        request_id=sample.request_id,
        lever="routing",
        amount=Decimal("0.01"),
        now=timezone.now(),
        hold_seconds=120,
    )
    calls_before = mock_upstream.app.requests_served

    shadow_evaluate_task(sample_seal(sample))
    evaluated()

    assert mock_upstream.app.requests_served == calls_before
    assert evaluation_rows(acme) == []
    assert not ShadowEvaluation.objects.for_tenant(acme.tenant).exists()
    month = month_of(acme)
    assert (month.reserved_usd, month.spent_usd, month.refused) == (Decimal("0.01"), 0, 0)


def test_a_sample_run_twice_is_recorded_and_paid_once(acme, evaluated):
    evaluation_on(acme.tenant)
    sealed = sample_seal(sample_of(acme, levers={"routing": acme.large.name}))

    shadow_evaluate_task(sealed)
    shadow_evaluate_task(sealed)
    evaluated()

    assert ShadowEvaluation.objects.for_tenant(acme.tenant).count() == len(evaluation_rows(acme)) == 1


def test_an_evaluation_past_its_bound_is_cut_off_and_gives_its_hold_back(acme, evaluated, monkeypatch):
    """The reference stalls (the mock's `stall`) longer than the bound allows: the evaluation ends without a verdict
    at its bound, before the hold's expiry, so no live evaluation's hold is ever given back under it."""
    acme.large.upstream_name = "mock-large-stall"
    acme.large.save()
    evaluation_on(acme.tenant)
    monkeypatch.setattr(services, "hold_seconds", lambda models: 0.5)

    shadow_evaluate_task(sample_seal(sample_of(acme, levers={"routing": acme.large.name})))
    evaluated()

    assert not ShadowEvaluation.objects.for_tenant(acme.tenant).exists()
    assert not EvaluationHold.objects.for_tenant(acme.tenant).exists()
    month = month_of(acme)
    assert (month.unjudged, month.reserved_usd, month.spent_usd) == (1, 0, 0)
