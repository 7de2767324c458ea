"""The demo's synthetic shadow evaluations agree with its synthetic history: each names a request the lever made
cheaper, each reference call is a ledger row of kind evaluation, and the dashboard shows every lever's agreement."""

import copy
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

from django.urls import reverse

from billing.finance.rollups_seed import _prices, seed_demo_usage
from billing.ledger.costs import BATCH_ENDPOINT
from billing.models import CacheStatus, EvaluationSpend, Lever, ShadowEvaluation, UsageKind, UsageRecord
from billing.quality.seed import (
    AGREEMENT,
    DEMO_SAMPLE_RATES,
    ROUTING_AGREEMENT_OTHERWISE,
    seed_demo_evaluations,
)
from billing.quality.selectors import Agreement
from routing.catalog import ModelPrices
from routing.models import Model
from tests.factories import ModelFactory, TenantFactory, UserFactory


def test_each_evaluation_names_a_request_its_lever_made_cheaper_and_a_metered_reference_call(seeded):
    evaluations = list(ShadowEvaluation.objects.for_tenant(seeded.tenant))
    requests = {row.request_id: row for row in UsageRecord.objects.for_tenant(seeded.tenant).filter(kind="request")}
    calls = {
        row.request_id: row for row in UsageRecord.objects.for_tenant(seeded.tenant).filter(kind=UsageKind.EVALUATION)
    }

    assert {evaluation.lever for evaluation in evaluations} == {Lever.ROUTING, Lever.SEMANTIC_CACHE, Lever.COMPRESSION}
    # The history has batch lines the routing lever made cheaper, which the runner never sees.
    assert any(row.endpoint == BATCH_ENDPOINT and row.served_model == "seeded-small" for row in requests.values())
    for evaluation in evaluations:
        request = requests[evaluation.request_id]
        assert request.http_status == 200 and evaluation.rule == request.route
        assert request.endpoint != BATCH_ENDPOINT
        if evaluation.lever == Lever.ROUTING:
            assert (request.served_model, evaluation.reference_model) == ("seeded-small", "seeded-large")
        elif evaluation.lever == Lever.SEMANTIC_CACHE:
            assert request.cache_status == CacheStatus.HIT_SEMANTIC
        else:
            assert request.prompt_tokens_after_compression < request.prompt_tokens_before_compression
        call = calls.pop(f"{evaluation.request_id}_{evaluation.lever}")
        assert (call.served_model, call.cost_usd, call.route) == (
            evaluation.reference_model,
            evaluation.cost_usd,
            "shadow-evaluation",
        )
        assert call.parent_request_id == request.request_id and call.customer == request.customer
        # The reference is sent the prompt as the request sent it, uncompressed only for compression's.
        compressed, uncompressed = request.prompt_tokens_after_compression, request.prompt_tokens_before_compression
        assert call.prompt_tokens == (uncompressed if evaluation.lever == Lever.COMPRESSION else compressed)
        assert call.cost_usd > 0 and call.saved_routing_usd == 0
    assert calls == {}


def test_each_levers_agreement_is_drawn_at_its_rate_deterministically(db):
    tenant = TenantFactory()
    ModelFactory(name="s"), ModelFactory(name="l", output_price_per_million=10)
    small, large = (Model.objects.with_prices_in_force().get(name=name) for name in ("s", "l"))
    moment = datetime(2026, 1, 5, 12, tzinfo=UTC)
    records = [
        UsageRecord(
            request_id=f"r{index}",
            served_model="s",
            route="a",
            http_status=200,
            task_type="chat",
            cache_status=CacheStatus.HIT_SEMANTIC,
            prompt_tokens=50,
            prompt_tokens_before_compression=100,
            prompt_tokens_after_compression=50,
            completion_tokens=10,
            created_at=moment,
        )
        for index in range(4000)
    ]
    prices = {
        model.name: ModelPrices(Decimal("0.15"), Decimal("0.075"), Decimal("0.60"), None) for model in (small, large)
    }

    seed_demo_evaluations(tenant=tenant, records=records, small=small, premium=large, prices=prices, seed=7)

    rates = {Lever.ROUTING: ROUTING_AGREEMENT_OTHERWISE, **AGREEMENT}
    rows = ShadowEvaluation.objects.for_tenant(tenant)
    for lever, rate in rates.items():
        sampled = rows.filter(lever=lever)
        agreement = Agreement(sampled.filter(agrees=True).count(), sampled.count())
        expected = float(DEMO_SAMPLE_RATES[lever]) * len(records)
        assert 0.8 * expected <= agreement.samples <= 1.2 * expected
        assert agreement.lower <= Decimal(str(rate)) <= agreement.upper, (lever, agreement.describe())
        # Spread, not drawn one by one: the share of disagreements is the rate's to within one evaluation.
        expected_disagreeing = agreement.samples * (1 - rate)
        assert abs(agreement.samples - agreement.agreeing - expected_disagreeing) < 1, (lever, agreement.describe())


def test_a_rerun_the_same_day_writes_no_evaluation_twice_and_keeps_the_spend(seeded):
    before = sorted(ShadowEvaluation.objects.for_tenant(seeded.tenant).values_list("request_id", "lever", "agrees"))
    spend = list(EvaluationSpend.objects.for_tenant(seeded.tenant).values_list("month", "spent_usd"))

    seed_demo_usage(tenant=seeded.tenant, days=10)

    after = sorted(ShadowEvaluation.objects.for_tenant(seeded.tenant).values_list("request_id", "lever", "agrees"))
    assert after == before
    assert list(EvaluationSpend.objects.for_tenant(seeded.tenant).values_list("month", "spent_usd")) == spend


def test_the_same_history_draws_the_same_evaluations_for_another_tenant(seeded):
    requests = list(UsageRecord.objects.for_tenant(seeded.tenant).filter(kind="request").order_by("id"))
    small, large = (Model.objects.with_prices_in_force().get(name=name) for name in ("seeded-small", "seeded-large"))
    prices = {model.name: _prices(model) for model in (small, large)}

    def drawn(tenant) -> tuple[list[tuple], list[tuple]]:
        """The evaluations and reference calls seeded for a copy of the history under the tenant's request ids."""
        prefix = f"{tenant.slug}-"
        copies = [copy.copy(record) for record in requests]
        for record in copies:
            record.pk, record.request_id = None, f"{prefix}{record.request_id}"
        calls = seed_demo_evaluations(tenant=tenant, records=copies, small=small, premium=large, prices=prices, seed=7)
        evaluations = ShadowEvaluation.objects.for_tenant(tenant).order_by("request_id", "lever")
        return (
            [
                (row.request_id.removeprefix(prefix), row.lever, row.rule, row.agrees, row.cost_usd)
                for row in evaluations
            ],
            [(call.request_id.removeprefix(prefix), call.prompt_tokens, call.cost_usd) for call in calls],
        )

    first, second = drawn(TenantFactory(slug="first")), drawn(TenantFactory(slug="second"))

    assert first == second and first[0]
    # And the same as the demo tenant's own, drawn when its history was written.
    own = ShadowEvaluation.objects.for_tenant(seeded.tenant).order_by("request_id", "lever")
    assert first[0] == [(row.request_id, row.lever, row.rule, row.agrees, row.cost_usd) for row in own]


def test_the_evaluation_budget_has_the_seeded_spend(seeded):
    calls = UsageRecord.objects.for_tenant(seeded.tenant).filter(kind=UsageKind.EVALUATION)
    by_month = defaultdict(Decimal)
    for call in calls:
        by_month[call.created_at.astimezone(UTC).date().replace(day=1)] += call.cost_usd

    spend = dict(EvaluationSpend.objects.for_tenant(seeded.tenant).values_list("month", "spent_usd"))

    assert spend == by_month and sum(spend.values()) > 0


def test_the_seeded_dashboard_shows_each_evaluated_levers_agreement_and_the_evaluation_spend(client, seeded):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    html = client.get(reverse("admin:billing_usage_dashboard"), {"tenant": seeded.tenant.pk}).content.decode()

    for lever in (Lever.ROUTING, Lever.SEMANTIC_CACHE, Lever.COMPRESSION):
        cell = html[html.index(f'id="agreement-{lever}"') :].split("</div>", 1)[0]
        assert "% (" in cell and "n=" in cell
    spend = html[html.index('id="evaluation-spend"') :].split("</p>", 1)[0]
    assert "Shadow evaluation cost <strong>$0.00</strong>" not in spend
