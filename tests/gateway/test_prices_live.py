"""A price change applies from the moment it takes effect, through the public API, and never to the past."""

import time
from datetime import timedelta
from decimal import Decimal

import httpx
from asgiref.sync import async_to_sync
from django.utils import timezone

from billing.ledger.costs import LEDGER_QUANTUM
from billing.models import UsageRecord
from llmops.gateway.snapshot import SHARED_SCOPE, config_versions_read
from routing.models import ModelPrice
from routing.prices import model_price_set
from tests.conftest import SMALL_PRICES

NEW_PRICES = {
    "input_price_per_million": Decimal("1.50"),
    "cached_input_price_per_million": Decimal("0.75"),
    "output_price_per_million": Decimal("6.00"),
}


def ask(gateway, setup, content: str = "Summarise our refund policy.") -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": setup.small.name, "messages": [{"role": "user", "content": content}]},
        headers={"authorization": f"Bearer {setup.key}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    return response


def row_of(response: httpx.Response) -> UsageRecord:
    return (
        UsageRecord.objects.unscoped()
        .select_related("price_version")
        .get(request_id=response.headers["x-llmops-request-id"])
    )


def cost_at(record: UsageRecord, input_price: Decimal, cached_price: Decimal, output_price: Decimal) -> Decimal:
    cost = (
        (record.prompt_tokens - record.cached_tokens) * input_price
        + record.cached_tokens * cached_price
        + record.completion_tokens * output_price
    ) / Decimal(1_000_000)
    return cost.quantize(LEDGER_QUANTUM)


def config_versions_read_now() -> list[str | None]:
    return async_to_sync(config_versions_read)([SHARED_SCOPE])


def test_a_price_change_prices_new_requests_and_leaves_past_costs_as_charged(gateway, acme):
    first_version = acme.small.price_in_force()
    before = [row_of(ask(gateway, acme, f"Question {n}")) for n in range(3)]
    costs_before = {record.request_id: record.cost_usd for record in before}

    new_version = model_price_set(model=acme.small, prices=NEW_PRICES, source="test")
    after = row_of(ask(gateway, acme))

    assert after.price_version == new_version
    assert after.cost_usd == cost_at(after, *NEW_PRICES.values())
    for record in UsageRecord.objects.unscoped().filter(request_id__in=costs_before):
        assert record.cost_usd == costs_before[record.request_id] == cost_at(record, *SMALL_PRICES)
        assert record.price_version_id == first_version.pk
    assert after.cost_usd > max(costs_before.values())


def test_prices_saved_ahead_apply_from_their_moment_without_another_change(gateway, acme):
    effective_from = timezone.now() + timedelta(seconds=2)
    upcoming = model_price_set(model=acme.small, prices=NEW_PRICES, effective_from=effective_from, source="test")
    versions_when_saved = config_versions_read_now()

    before = row_of(ask(gateway, acme))
    time.sleep(max((effective_from - timezone.now()).total_seconds(), 0) + 0.1)
    after = row_of(ask(gateway, acme))

    assert config_versions_read_now() == versions_when_saved, "nothing was saved in between"
    assert before.price_version == acme.small.price_versions.earliest("effective_from")
    assert before.cost_usd == cost_at(before, *SMALL_PRICES)
    assert after.price_version == upcoming
    assert after.cost_usd == cost_at(after, *NEW_PRICES.values())
    assert after.created_at >= effective_from > before.created_at


def test_each_tenant_is_charged_the_one_catalog_price(gateway, acme, globex):
    """Prices belong to the shared catalog: a change reaches every tenant that uses the model, and only it."""
    acme_before, globex_before = row_of(ask(gateway, acme)), row_of(ask(gateway, globex))

    model_price_set(model=acme.small, prices=NEW_PRICES, source="test")
    acme_after, globex_after = row_of(ask(gateway, acme)), row_of(ask(gateway, globex))

    assert acme_after.price_version.model == acme.small
    assert acme_after.cost_usd == cost_at(acme_after, *NEW_PRICES.values())
    assert globex_after.price_version == globex_before.price_version
    assert globex_after.price_version.model == globex.small
    assert globex_after.cost_usd == cost_at(globex_after, *SMALL_PRICES)
    assert acme_before.price_version != acme_after.price_version
    assert ModelPrice.objects.filter(model=globex.small).count() == 1
