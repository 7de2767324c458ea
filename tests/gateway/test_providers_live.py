"""Anthropic and Bedrock behind the gateway: the openai SDK talks OpenAI, the ledger prices their usage."""

from decimal import Decimal

import httpx
import pytest

from billing.models import UsageRecord
from routing.cache.store import cache_writes_flush
from routing.models import CacheEntry
from tests.cache.conftest import cache_policy
from tests.factories import ModelFactory
from tests.providers.asgi import estimate_tokens

SONNET_PRICES = {
    "input_price_per_million": Decimal("3.00"),
    "cached_input_price_per_million": Decimal("0.30"),
    "cache_write_price_per_million": Decimal("3.75"),
    "output_price_per_million": Decimal("15.00"),
}


@pytest.fixture
def claude(acme, anthropic_provider):
    model = ModelFactory(
        name="claude-sonnet", provider=anthropic_provider, upstream_name="claude-3-5-sonnet-20241022", **SONNET_PRICES
    )
    acme.tenant.model_access.allowed_models.add(model)
    return model


@pytest.fixture
def nova(acme, bedrock_provider):
    model = ModelFactory(name="nova-lite", provider=bedrock_provider, upstream_name="amazon.nova-lite-v1:0")
    acme.tenant.model_access.allowed_models.add(model)
    return model


def expected_cost(record: UsageRecord, prices: dict) -> Decimal:
    uncached = record.prompt_tokens - record.cached_tokens - record.cache_write_tokens
    return (
        uncached * prices["input_price_per_million"]
        + record.cached_tokens * prices["cached_input_price_per_million"]
        + record.cache_write_tokens * prices["cache_write_price_per_million"]
        + record.completion_tokens * prices["output_price_per_million"]
    ) / Decimal(1_000_000)


def test_anthropic_through_the_sdk_with_prompt_caching_priced(openai_client, claude):
    system = [{"type": "text", "text": "Policy handbook. " * 400, "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "What is the refund window?"}]

    first = openai_client.chat.completions.create(model=claude.name, messages=messages, max_tokens=50)
    second = openai_client.chat.completions.create(model=claude.name, messages=messages, max_tokens=50)

    assert first.choices[0].message.content
    writes, reads = UsageRecord.objects.unscoped().order_by("created_at")
    assert writes.cache_write_tokens > 0 and writes.cached_tokens == 0
    assert reads.cached_tokens > 0 and reads.cache_write_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == reads.cached_tokens
    for record in (writes, reads):
        assert record.served_model == claude.name
        assert record.cost_usd == expected_cost(record, SONNET_PRICES)


def test_anthropic_streams_through_the_sdk(openai_client, claude):
    stream = openai_client.chat.completions.create(
        model=claude.name,
        messages=[{"role": "user", "content": "Stream me a haiku"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=40,
    )
    chunks = list(stream)

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    usage = next(chunk.usage for chunk in chunks if chunk.usage)
    record = UsageRecord.objects.unscoped().get()
    assert record.is_stream and (record.prompt_tokens, record.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_bedrock_through_the_sdk_streaming_and_not(openai_client, nova):
    completion = openai_client.chat.completions.create(
        model=nova.name, messages=[{"role": "user", "content": "Hello Bedrock"}], max_tokens=30
    )
    chunks = list(
        openai_client.chat.completions.create(
            model=nova.name, messages=[{"role": "user", "content": "Hello again"}], max_tokens=30, stream=True
        )
    )

    assert completion.choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    records = list(UsageRecord.objects.unscoped().order_by("created_at"))
    assert [r.is_stream for r in records] == [False, True]
    assert all(r.served_model == nova.name and r.prompt_tokens > 0 and r.cost_usd > 0 for r in records)
    assert records[0].completion_tokens == completion.usage.completion_tokens


@pytest.mark.parametrize(
    ("provider_fixture", "upstream_name", "finish_reason"),
    [
        ("anthropic_provider", "claude-stop-model_context_window_exceeded", "length"),
        ("anthropic_provider", "claude-stop-pause_turn", "pause_turn"),
        ("bedrock_provider", "anthropic.claude-stop-model_context_window_exceeded", "length"),
        ("bedrock_provider", "amazon.nova-stop-malformed_model_output", "malformed_model_output"),
    ],
    ids=["anthropic-context-window", "anthropic-pause-turn", "bedrock-context-window", "bedrock-malformed"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_answer_cut_by_the_context_window_or_malformed_is_answered_but_never_cached(
    request, openai_client, acme, provider_fixture, upstream_name, finish_reason, stream
):
    """Such a stop reason used to read "stop", so the cut-off answer was stored and served as whole. The client gets
    the finish reason (the SDK takes one it does not list), and the cache stores nothing."""
    provider = request.getfixturevalue(provider_fixture)
    model = ModelFactory(name="cut-short", provider=provider, upstream_name=upstream_name)
    acme.tenant.model_access.allowed_models.add(model)
    cache_policy(acme, semantic=False)
    ask = {"model": model.name, "messages": [{"role": "user", "content": "Summarise the handbook"}], "temperature": 0}

    statuses = []
    for _ in range(2):
        raw = openai_client.chat.completions.with_raw_response.create(**ask, stream=stream)
        answer = raw.parse()
        if stream:
            finished = [chunk.choices[0].finish_reason for chunk in answer if chunk.choices]
            assert finished[-1] == finish_reason
        else:
            assert answer.choices[0].finish_reason == finish_reason and answer.choices[0].message.content
        statuses.append(raw.headers["x-llmops-cache"])
        cache_writes_flush()

    assert statuses == ["miss", "miss"]
    assert not CacheEntry.objects.unscoped().exists()


@pytest.mark.parametrize(
    ("provider_fixture", "upstream_name"),
    [("anthropic_provider", "claude-no-usage"), ("bedrock_provider", "amazon.nova-no-usage")],
    ids=["anthropic", "bedrock"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_answer_that_reports_no_usage_is_charged_the_gateways_count(
    request, openai_client, acme, provider_fixture, upstream_name, stream
):
    """Read as zero tokens, such an answer cost nothing; the gateway's own count charges it, marked as an estimate."""
    provider = request.getfixturevalue(provider_fixture)
    model = ModelFactory(name="unmetered", provider=provider, upstream_name=upstream_name, **SONNET_PRICES)
    acme.tenant.model_access.allowed_models.add(model)
    ask = {"model": model.name, "messages": [{"role": "user", "content": "Summarise the handbook"}], "stream": stream}

    answer = openai_client.chat.completions.create(**ask)

    if stream:
        list(answer)
    record = UsageRecord.objects.unscoped().get()
    assert (record.http_status, record.served_model, record.usage_estimated) == (200, model.name, True)
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_usd == expected_cost(record, SONNET_PRICES) > 0


def test_an_anthropic_stream_cut_before_its_end_is_charged_the_prompt_it_reported_at_its_start(
    monkeypatch, gateway, acme, claude, anthropic_upstream
):
    """Anthropic reports the prompt's usage, cache reads and writes apart, as a stream starts, and the rest at its
    end. A stream cut before its end is charged that prompt at its prices (a cache read at the cached price, not the
    input price; a write at the write price) and only the answer the gateway counts."""
    monkeypatch.setattr(anthropic_upstream.app, "break_streams", True)
    handbook, question = "Policy handbook. " * 400, "What is the refund window?"
    system = [{"type": "text", "text": handbook, "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    body = {"model": claude.name, "messages": messages, "max_tokens": 50, "stream": True}

    for _ in range(2):
        headers = {"authorization": f"Bearer {acme.key}"}
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert "upstream_stream_truncated" in response.text and "data: [DONE]" not in response.text

    writes, reads = UsageRecord.objects.unscoped().order_by("created_at")
    # The loopback server counts four characters a token, which tiktoken's count of the prompt is not.
    prompt, cached = estimate_tokens(handbook + question), estimate_tokens(handbook)
    assert (writes.prompt_tokens, writes.cache_write_tokens, writes.cached_tokens) == (prompt, cached, 0)
    assert (reads.prompt_tokens, reads.cache_write_tokens, reads.cached_tokens) == (prompt, 0, cached)
    for record in (writes, reads):
        assert record.usage_estimated and 0 < record.completion_tokens < 10
        assert record.cost_usd == expected_cost(record, SONNET_PRICES) > 0
