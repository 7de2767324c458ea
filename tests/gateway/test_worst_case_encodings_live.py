"""Through the live gateway: a chain whose fallback bills the prompt in another encoding than the served model's
reserves the fallback's prompt with PROMPT_MARGIN, so a budget that holds it only in the served model's count leaves
that fallback out."""

from decimal import Decimal

from billing.budgets.services import budget_create
from billing.ledger.costs import LEDGER_QUANTUM, usage_cost
from routing.catalog import ModelPrices
from routing.services import tenant_model_access_set
from routing.tokens import count_chat_tokens
from tests.conftest import LARGE_PRICES, SMALL_PRICES
from tests.factories import ModelFactory
from tests.gateway.test_routing_live import chat, publish

# cl100k_base counts this text at about 1.4 times o200k_base.
MESSAGES = [{"role": "user", "content": "日本語は主に日本で話されている言語であり、約一億二千万人の話者がいる。" * 20}]
MAX_TOKENS = 10


def priced_model(acme, name: str, upstream_name: str, prices):
    return ModelFactory(
        name=name,
        provider=acme.small.provider,
        upstream_name=upstream_name,
        input_price_per_million=prices[0],
        cached_input_price_per_million=prices[1],
        output_price_per_million=prices[2],
    )


def fallback_bill(prompt_tokens: int) -> Decimal:
    return usage_cost(
        prices=ModelPrices(*LARGE_PRICES), prompt_tokens=prompt_tokens, cached_tokens=0, completion_tokens=MAX_TOKENS
    )


def mixed_encodings_chain(acme):
    served = priced_model(acme, "acme-4o", "gpt-4o", SMALL_PRICES)
    fallback = priced_model(acme, "acme-turbo", "gpt-4-turbo", LARGE_PRICES)
    tenant_model_access_set(tenant=acme.tenant, allowed_models=[served, fallback], default_model=served)
    rule = {
        "priority": 1,
        "name": "mixed encodings",
        "match": {"requested_models": [served.name]},
        "outcome": {"target_model": served.name, "fallback_models": [fallback.name]},
    }
    publish(acme, [rule])
    return served, fallback


def test_a_fallback_whose_encoding_bills_more_than_the_budget_holds_is_left_out(gateway, acme):
    served, fallback = mixed_encodings_chain(acme)
    counted = count_chat_tokens(MESSAGES, model="gpt-4o")
    assert count_chat_tokens(MESSAGES, model="gpt-4-turbo") > counted
    # What the old worst case reserved for the fallback, alone or in the chain: gpt-4o's count. gpt-4-turbo bills
    # more than that.
    limit = fallback_bill(counted).quantize(LEDGER_QUANTUM)
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)

    response = chat(gateway, acme, {"model": served.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS})

    assert response.status_code == 200, response.text
    assert f"budget-skipped={fallback.name}" in response.headers["x-llmops-route"]
