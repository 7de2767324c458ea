"""The demo's synthetic history reads like the gateway's own ledger: each priced row names its price version."""

from billing.ledger.costs import BATCH_ENDPOINT, Usage
from billing.models import CacheStatus, UsageRecord
from routing.catalog import ModelPrices


def test_every_seeded_row_names_the_price_version_its_cost_was_computed_at(seeded):
    rows = list(UsageRecord.objects.unscoped().filter(tenant=seeded.tenant).select_related("price_version__model"))
    answered = [
        row
        for row in rows
        if row.cache_status == CacheStatus.MISS and row.http_status == 200 and row.endpoint != BATCH_ENDPOINT
    ]

    assert rows and answered
    assert all(row.price_version is not None and row.price_version.model.name == row.served_model for row in rows)
    for row in answered:
        version = row.price_version
        prices = ModelPrices(
            version.input_price_per_million,
            version.cached_input_price_per_million,
            version.output_price_per_million,
            version.cache_write_price_per_million,
        )
        usage = Usage(
            prompt_tokens=row.prompt_tokens, cached_tokens=row.cached_tokens, completion_tokens=row.completion_tokens
        )
        assert row.cost_usd == usage.cost(prices)
