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


def _list_cost(usage) -> Decimal:
    input_price, _, output_price = LARGE_PRICES
    return (usage.prompt_tokens * input_price + usage.completion_tokens * output_price) / Decimal(1_000_000)


def _flex_priced(acme, share: str | None) -> None:
    acme.large.flex_price_multiplier = None if share is None else Decimal(share)
    acme.large.save(update_fields=["flex_price_multiplier"])


def test_an_answer_served_at_the_flex_tier_is_charged_the_models_flex_share(openai_client, acme):
    _flex_priced(acme, "0.5")
    messages = [{"role": "user", "content": "Summarise our refund policy for the flex tier."}]

    reply = openai_client.chat.completions.with_raw_response.create(
        model=acme.large.name, messages=messages, service_tier="flex"
    )

    answer = reply.parse()
    assert answer.service_tier == "flex"
    list_cost = _list_cost(answer.usage)
    record = UsageRecord.objects.unscoped().get(request_id=reply.headers["x-llmops-request-id"])
    assert record.cost_usd == list_cost / 2
    assert record.saved_batch_usd == list_cost / 2
    assert reply.headers["x-llmops-cost-usd"] == f"{list_cost / 2:.10f}"


def test_a_streamed_flex_answer_is_charged_the_flex_share(openai_client, acme):
    _flex_priced(acme, "0.5")
    messages = [{"role": "user", "content": "Stream our refund policy at the flex tier."}]

    stream = openai_client.chat.completions.with_raw_response.create(
        model=acme.large.name,
        messages=messages,
        service_tier="flex",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream.parse())

    usage = chunks[-1].usage
    record = UsageRecord.objects.unscoped().get(request_id=stream.headers["x-llmops-request-id"])
    assert record.cost_usd == _list_cost(usage) / 2


def test_flex_is_charged_the_list_price_where_the_model_has_no_flex_prices_or_the_answer_was_not_flex(
    openai_client, acme
):
    messages = [{"role": "user", "content": "Summarise our refund policy."}]
    _flex_priced(acme, None)
    unpriced = openai_client.chat.completions.with_raw_response.create(
        model=acme.large.name, messages=messages, service_tier="flex"
    )
    _flex_priced(acme, "0.5")
    default_tier = openai_client.chat.completions.with_raw_response.create(
        model=acme.large.name, messages=messages, service_tier="default"
    )

    for reply in (unpriced, default_tier):
        record = UsageRecord.objects.unscoped().get(request_id=reply.headers["x-llmops-request-id"])
        assert record.cost_usd == _list_cost(reply.parse().usage)
        assert record.saved_batch_usd == 0
