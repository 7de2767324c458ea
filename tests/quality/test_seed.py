"""The demo's synthetic shadow evaluations agree with its synthetic history: each names a request the lever made
cheaper, each reference call is a ledger row of kind evaluation, and the dashboard shows every lever's agreement."""

from datetime import UTC, datetime
from decimal import Decimal

from django.urls import reverse

from billing.finance.rollups_seed import seed_demo_usage
from billing.models import CacheStatus, Lever, ShadowEvaluation, UsageKind, UsageRecord
from billing.quality.seed import AGREEMENT, DEMO_SAMPLE_RATES, ROUTING_AGREEMENT_OTHERWISE, seed_demo_evaluations
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
    for evaluation in evaluations:
        request = requests[evaluation.request_id]
        assert request.http_status == 200 and evaluation.rule == request.route
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


def test_a_rerun_the_same_day_writes_the_same_evaluations_once(seeded):
    before = sorted(ShadowEvaluation.objects.for_tenant(seeded.tenant).values_list("request_id", "lever", "agrees"))

    seed_demo_usage(tenant=seeded.tenant, days=10)

    after = sorted(ShadowEvaluation.objects.for_tenant(seeded.tenant).values_list("request_id", "lever", "agrees"))
    assert after == before


def test_the_seeded_dashboard_shows_each_evaluated_levers_agreement_and_the_evaluation_spend(client, seeded):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    html = client.get(reverse("admin:billing_usage_dashboard"), {"tenant": seeded.tenant.pk}).content.decode()

    for lever in (Lever.ROUTING, Lever.SEMANTIC_CACHE, Lever.COMPRESSION):
        cell = html[html.index(f'id="agreement-{lever}"') :].split("</div>", 1)[0]
        assert "% (" in cell and "n=" in cell
    spend = html[html.index('id="evaluation-spend"') :].split("</p>", 1)[0]
    assert "Shadow evaluation cost <strong>$0.00</strong>" not in spend
