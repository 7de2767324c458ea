"""What the demo shows first: savings by lever in the synthetic history, the headline against the all-premium,
no-cache baseline, and rollups that are fresh when the dashboard opens."""

import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from billing.ledger.costs import LEDGER_QUANTUM, usage_cost
from billing.ledger.totals import SAVINGS_LEVERS
from billing.models import UsageRecord
from routing.catalog import ModelPrices
from routing.models import Model
from tests.factories import UserFactory
from tests.finance.conftest import make_finance_tenant, usage_row
from tests.finance.test_dashboard import local_today

HEADLINE = re.compile(r'id="headline-(saved|percent|baseline|spend)">\$?([^<]*)<')
LEVER_ROW = re.compile(r'<tr id="saved-(\w+)"><th>[^<]*</th><td class="num saved">([^<]*)</td>')
CENT = Decimal("0.01")


def prices(name: str) -> ModelPrices:
    model = Model.objects.with_prices_in_force().get(name=name)
    return ModelPrices(
        model.input_price_per_million, model.cached_input_price_per_million, model.output_price_per_million
    )


def list_cost(model_prices: ModelPrices, record: UsageRecord, *, cached_tokens: int | None = None) -> Decimal:
    return usage_cost(
        prices=model_prices,
        prompt_tokens=record.prompt_tokens,
        cached_tokens=record.cached_tokens if cached_tokens is None else cached_tokens,
        completion_tokens=record.completion_tokens,
    )


def cents(value: Decimal) -> str:
    return f"{value.quantize(CENT, rounding=ROUND_HALF_EVEN):f}"


def dashboard_page(client, **params) -> str:
    response = client.get(reverse("admin:billing_usage_dashboard"), params)
    assert response.status_code == 200
    return response.content.decode()


def test_synthetic_history_saves_with_every_lever_as_its_own_rows_say(seeded):
    small, premium = prices("seeded-small"), prices("seeded-large")
    # The requests: the seeded shadow evaluations' reference calls save nothing and are checked in tests/quality.
    requests = UsageRecord.objects.unscoped().filter(tenant=seeded.tenant, kind="request")
    records = list(requests.order_by("created_at", "id"))
    totals = (
        UsageRecord.objects.unscoped()
        .filter(tenant=seeded.tenant)
        .aggregate(**{lever: Sum(f"saved_{lever}_usd") for lever in SAVINGS_LEVERS})
    )
    assert all(totals[lever] > 0 for lever in SAVINGS_LEVERS), totals

    answered_at: dict[tuple[str, Decimal], object] = {}
    hits = 0
    for record in records:
        served = small if record.served_model == "seeded-small" else premium
        if record.cache_status in ("hit-exact", "hit-semantic"):
            hits += 1
            # A hit replays an earlier answer of the same model: it costs nothing and saves what that one cost.
            assert (record.cost_usd, record.prompt_tokens, record.completion_tokens) == (0, 0, 0)
            assert answered_at[(record.served_model, record.saved_cache_usd)] < record.created_at
            assert record.saved_routing_usd == record.saved_compression_usd == record.saved_batch_usd == 0
            continue
        assert record.saved_cache_usd == 0
        if record.http_status >= 400:
            assert record.cost_usd == record.saved_routing_usd == record.saved_batch_usd == 0
            continue
        charged = list_cost(served, record)
        # Routing's saving is the switch of model on tokens none of which the provider's cache read.
        uncached = list_cost(served, record, cached_tokens=0)
        routing = list_cost(premium, record, cached_tokens=0) - uncached if served is small else Decimal(0)
        assert record.saved_routing_usd == routing
        assert record.saved_provider_cache_usd == uncached - charged
        if record.endpoint == "/v1/batches":
            assert record.cost_usd == (charged * Decimal("0.5")).quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN)
            assert record.saved_batch_usd == charged - record.cost_usd
        else:
            assert (record.cost_usd, record.saved_batch_usd) == (charged, 0)
            answered_at.setdefault((record.served_model, record.cost_usd), record.created_at)
        before, after = record.prompt_tokens_before_compression, record.prompt_tokens_after_compression
        removed = (before - after) if before else 0
        assert record.saved_compression_usd == usage_cost(
            prices=served, prompt_tokens=removed, cached_tokens=0, completion_tokens=0
        )
        assert after in (None, record.prompt_tokens)
    assert hits > len(records) / 10


def test_headline_is_the_baseline_minus_the_spend_of_the_ledger(client, seeded):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    today = local_today(seeded.tenant)
    page = dashboard_page(client, tenant=seeded.tenant.pk, since=today - timedelta(days=30), until=today)

    # Product spend: the seeded shadow evaluations' calls are the evaluation spend, shown apart.
    records = UsageRecord.objects.unscoped().filter(tenant=seeded.tenant).exclude(kind="evaluation")
    spend = sum((record.cost_usd for record in records), Decimal(0))
    saved_by_row = [sum(getattr(record, f"saved_{lever}_usd") for lever in SAVINGS_LEVERS) for record in records]
    baseline = spend + sum(saved_by_row, Decimal(0))
    saved = baseline - spend
    assert dict(HEADLINE.findall(page)) == {
        "saved": cents(saved),
        "percent": f"{float(saved / baseline) * 100:.1f} %",
        "baseline": cents(baseline),
        "spend": cents(spend),
    }
    assert saved > spend  # routing, caching, compression and batching save more than the requests cost
    by_lever = dict(LEVER_ROW.findall(page))
    for lever in SAVINGS_LEVERS:
        saved_by_lever = sum((getattr(record, f"saved_{lever}_usd") for record in records), Decimal(0))
        assert by_lever[lever] == cents(saved_by_lever) != "0.00"


def test_another_tenants_headline_shows_nothing_of_the_first(client, seeded):
    other = make_finance_tenant("other-co")
    row = usage_row(other.keys[0], created_at=timezone.now() - timedelta(minutes=5), cost="0.2500000000")
    row.saved_routing_usd = Decimal("0.7500000000")
    UsageRecord.objects.bulk_create([row])

    client.force_login(other.finance_user)
    assert dict(HEADLINE.findall(dashboard_page(client))) == {
        "saved": "0.75",
        "percent": "75.0 %",
        "baseline": "1.00",
        "spend": "0.25",
    }
    assert client.get(reverse("admin:billing_usage_dashboard"), {"tenant": seeded.tenant.pk}).status_code == 404

    empty = make_finance_tenant("empty-co")
    client.force_login(empty.finance_user)
    assert dict(HEADLINE.findall(dashboard_page(client))) == {
        "saved": "0.00",
        "percent": "–",
        "baseline": "0.00",
        "spend": "0.00",
    }
