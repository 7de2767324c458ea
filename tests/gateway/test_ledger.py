"""The ledger's cost is exact: priced from the usage the provider returned, cached tokens at their own price."""

from decimal import Decimal

import httpx

from billing.models import UsageRecord
from tests.conftest import LARGE_PRICES


def test_cached_prompt_tokens_are_priced_exactly(openai_client, acme):
    long_context = "Our refund policy covers every order placed within thirty days. " * 120
    messages = [{"role": "system", "content": long_context}, {"role": "user", "content": "Summarise it."}]

    openai_client.chat.completions.create(model=acme.large.name, messages=messages)
    second = openai_client.chat.completions.with_raw_response.create(model=acme.large.name, messages=messages)

    usage = second.parse().usage
    cached = usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < usage.prompt_tokens
    input_price, cached_price, output_price = LARGE_PRICES
    expected = (
        (usage.prompt_tokens - cached) * input_price + cached * cached_price + usage.completion_tokens * output_price
    ) / Decimal(1_000_000)
    record = UsageRecord.objects.unscoped().get(request_id=second.headers["x-llmops-request-id"])
    assert record.cached_tokens == cached
    assert record.cost_usd == expected
    assert second.headers["x-llmops-cost-usd"] == f"{expected:.10f}"


def test_every_request_has_exactly_one_row(gateway, acme):
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {acme.key}"}

    request_ids = {
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers).headers["x-llmops-request-id"]
        for _ in range(5)
    }

    assert set(UsageRecord.objects.unscoped().values_list("request_id", flat=True)) == request_ids


def test_health_endpoints(gateway):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
