"""Provider prompt caching as a lever, through the live gateway and its public API: under a rule that opts in, the
gateway marks the stable prefix of a Claude request for Anthropic's or Bedrock's prompt cache, the ledger prices the
cache writes and reads at the catalog's prices, and the saving shows under the `provider_cache` lever in /api/usage/
and on the dashboard."""

import math
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.urls import reverse
from django.utils import timezone

from billing.budgets.services import budget_create
from billing.finance.dashboard import dashboard_build
from billing.finance.rollups import usage_rollups_refresh
from billing.ledger.costs import format_cost
from billing.ledger.selectors import tenant_zone
from billing.models import UsageRecord
from billing.templatetags.finance import cents
from llmops.gateway.chat.worst_case import PROMPT_MARGIN
from routing.models import Model, ModelPrice, RoutingPolicy
from routing.policy.drafts import policy_draft_document, policy_draft_replace
from routing.services import routing_policy_publish
from routing.tokens import count_chat_tokens
from tenants.models import Role
from tenants.services import membership_set
from tests.factories import ModelFactory, UserFactory
from tests.gateway.test_routing_live import publish

MILLION = Decimal(1_000_000)
# About 1,900 tokens, counted by tiktoken or at four characters a token: a system prompt long enough to cache.
HANDBOOK = "Refunds are issued within 14 days of a return being received at our warehouse. " * 95
QUESTION = "How long does a refund take?"
LONG_PROMPT = [{"role": "system", "content": HANDBOOK}, {"role": "user", "content": QUESTION}]
SHORT_PROMPT = [{"role": "system", "content": "You are a support agent."}, {"role": "user", "content": QUESTION}]
EPHEMERAL = {"type": "ephemeral"}
CACHE_POINT = {"cachePoint": {"type": "default"}}


def provider_cache(setup, mode: str) -> None:
    """Publish one rule for every request, with the given provider_cache (a new version of the tenant's policy)."""
    rules = [{"priority": 10, "name": f"provider-cache-{mode}", "outcome": {"provider_cache": mode}}]
    policy = RoutingPolicy.objects.for_tenant(setup.tenant).first()
    if policy is None:
        publish(setup, rules)
        return
    policy_draft_replace(policy=policy, document={**policy_draft_document(policy=policy), "rules": rules})
    routing_policy_publish(policy=policy, actor=None)


@pytest.fixture
def opted_in(acme) -> None:
    provider_cache(acme, "auto")


def claude_model(name: str, provider, upstream_name: str) -> Model:
    """Claude priced with only its input and output prices: the catalog sets its cache prices to Anthropic's
    documented multiples (writes 1.25x, reads 0.1x)."""
    return ModelFactory(
        name=name,
        provider=provider,
        upstream_name=upstream_name,
        input_price_per_million=Decimal("3.00"),
        cached_input_price_per_million=None,
        output_price_per_million=Decimal("15.00"),
    )


@pytest.fixture
def claude(acme, anthropic_provider) -> Model:
    model = claude_model("claude-sonnet", anthropic_provider, "claude-3-5-sonnet-20241022")
    acme.tenant.model_access.allowed_models.add(model)
    return model


@pytest.fixture
def bedrock_claude(acme, bedrock_provider) -> Model:
    model = claude_model("bedrock-sonnet", bedrock_provider, "anthropic.claude-3-7-sonnet-20250219-v1:0")
    acme.tenant.model_access.allowed_models.add(model)
    return model


def chat(gateway, setup, model: str, messages: list[dict], **options) -> httpx.Response:
    body = {"model": model, "messages": messages, "max_tokens": 50, **options}
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {setup.key}"},
        timeout=30,
    )
    if options.get("stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
    return response


def ledger_rows() -> list[UsageRecord]:
    return list(UsageRecord.objects.unscoped().order_by("created_at", "id"))


def catalog_cost(record: UsageRecord) -> Decimal:
    """The row's cost at the prices of its price version: uncached input, cache writes, cache reads and output."""
    prices = record.price_version
    uncached = record.prompt_tokens - record.cached_tokens - record.cache_write_tokens
    return (
        uncached * prices.input_price_per_million
        + record.cache_write_tokens * prices.cache_write_price_per_million
        + record.cached_tokens * prices.cached_input_price_per_million
        + record.completion_tokens * prices.output_price_per_million
    ) / MILLION


def catalog_saving(record: UsageRecord) -> Decimal:
    """What the cached and cache-written tokens would have cost at the input price, minus what they cost."""
    prices = record.price_version
    at_input = (record.cached_tokens + record.cache_write_tokens) * prices.input_price_per_million
    at_cache_prices = (
        record.cache_write_tokens * prices.cache_write_price_per_million
        + record.cached_tokens * prices.cached_input_price_per_million
    )
    return (at_input - at_cache_prices) / MILLION


def test_a_repeated_long_system_prompt_to_anthropic_is_written_once_and_read_after(
    gateway, acme, claude, anthropic_upstream, opted_in
):
    answers = [
        chat(gateway, acme, claude.name, LONG_PROMPT),
        chat(gateway, acme, claude.name, LONG_PROMPT),
        chat(gateway, acme, claude.name, LONG_PROMPT, stream=True, stream_options={"include_usage": True}),
    ]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    # The client sent a plain string; the gateway marked the system prompt for the provider's cache.
    sent = anthropic_upstream.app.requests
    assert all(
        request["system"] == [{"type": "text", "text": HANDBOOK, "cache_control": EPHEMERAL}] for request in sent
    )
    version = claude.price_in_force()
    assert (version.cache_write_price_per_million, version.cached_input_price_per_million) == (
        Decimal("3.75"),
        Decimal("0.3"),
    )
    written, read, streamed = ledger_rows()
    assert written.cache_write_tokens > 1800 and written.cached_tokens == 0
    assert read.cached_tokens == streamed.cached_tokens == written.cache_write_tokens
    assert read.cache_write_tokens == streamed.cache_write_tokens == 0
    assert streamed.is_stream
    assert answers[1].json()["usage"]["prompt_tokens_details"]["cached_tokens"] == read.cached_tokens
    for record in (written, read, streamed):
        assert record.price_version_id == version.pk
        assert record.cost_usd == catalog_cost(record)
        assert record.saved_provider_cache_usd == catalog_saving(record)
    # Writing cost a quarter more than plain input; every read saves nine tenths of it.
    assert written.saved_provider_cache_usd == written.cache_write_tokens * Decimal("-0.75") / MILLION
    assert read.saved_provider_cache_usd == read.cached_tokens * Decimal("2.70") / MILLION
    assert answers[1].headers["x-llmops-cost-usd"] == format_cost(read.cost_usd)


def test_a_repeated_long_system_prompt_to_claude_on_bedrock_is_written_once_and_read_after(
    gateway, acme, bedrock_claude, bedrock_upstream, opted_in
):
    answers = [
        chat(gateway, acme, bedrock_claude.name, LONG_PROMPT),
        chat(gateway, acme, bedrock_claude.name, LONG_PROMPT, stream=True, stream_options={"include_usage": True}),
    ]

    assert [answer.status_code for answer in answers] == [200, 200]
    assert all(request["system"] == [{"text": HANDBOOK}, CACHE_POINT] for request in bedrock_upstream.app.requests)
    written, read = ledger_rows()
    assert written.cache_write_tokens > 1800 and written.cached_tokens == 0
    assert read.cached_tokens == written.cache_write_tokens and read.cache_write_tokens == 0
    for record in (written, read):
        assert record.cost_usd == catalog_cost(record)
        assert record.saved_provider_cache_usd == catalog_saving(record)
    assert read.saved_provider_cache_usd == read.cached_tokens * Decimal("2.70") / MILLION


def test_a_short_prompt_gets_no_checkpoint(gateway, acme, claude, anthropic_upstream, opted_in):
    for _ in range(2):
        assert chat(gateway, acme, claude.name, SHORT_PROMPT).status_code == 200

    assert "cache_control" not in str(anthropic_upstream.app.requests)
    assert all(
        (row.cached_tokens, row.cache_write_tokens, row.saved_provider_cache_usd) == (0, 0, 0) for row in ledger_rows()
    )


def test_a_clients_own_cache_control_is_kept_as_it_is(gateway, acme, claude, anthropic_upstream):
    own = {"type": "ephemeral", "ttl": "5m"}
    messages = [
        {"role": "system", "content": HANDBOOK},
        {"role": "user", "content": [{"type": "text", "text": QUESTION, "cache_control": own}]},
    ]

    for _ in range(2):
        assert chat(gateway, acme, claude.name, messages).status_code == 200

    for sent in anthropic_upstream.app.requests:
        # No mark of the gateway's on the long system prompt: the client's one mark, as it sent it.
        assert sent["system"] == [{"type": "text", "text": HANDBOOK}]
        assert sent["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": QUESTION, "cache_control": own}]}
        ]
    written, read = ledger_rows()
    assert written.cache_write_tokens > 1800 and read.cached_tokens == written.cache_write_tokens


@pytest.mark.parametrize("published", ["no policy", "off"])
def test_without_a_rule_opting_in_no_checkpoint_is_sent(gateway, acme, claude, anthropic_upstream, published):
    """The provider's cache is shared by every tenant behind the provider's credential: off unless a rule opts in."""
    if published == "off":
        provider_cache(acme, "off")

    for _ in range(2):
        assert chat(gateway, acme, claude.name, LONG_PROMPT).status_code == 200

    assert "cache_control" not in str(anthropic_upstream.app.requests)
    rows = ledger_rows()
    assert [(row.cached_tokens, row.cache_write_tokens) for row in rows] == [(0, 0)] * 2
    assert rows[0].cost_usd == rows[1].cost_usd == catalog_cost(rows[0])


def test_claude_3_haiku_on_bedrock_gets_no_cache_point_and_is_answered(
    gateway, acme, bedrock_provider, bedrock_upstream, opted_in
):
    """Bedrock answers a cachePoint on Claude 3 Haiku with a 400: the gateway sets none there."""
    haiku = claude_model("bedrock-haiku-3", bedrock_provider, "anthropic.claude-3-haiku-20240307-v1:0")
    acme.tenant.model_access.allowed_models.add(haiku)

    # About 3,800 tokens: over the 2,048 any Haiku would need.
    longer = [{"role": "system", "content": HANDBOOK * 2}, {"role": "user", "content": QUESTION}]
    answers = [chat(gateway, acme, haiku.name, longer), chat(gateway, acme, haiku.name, longer, stream=True)]

    assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
    assert answers[0].json()["choices"][0]["message"]["content"] == f"Echo: {QUESTION}"
    assert [request["modelId"] for request in bedrock_upstream.app.requests] == [haiku.upstream_name] * 2
    assert "cachePoint" not in str(bedrock_upstream.app.requests)
    assert [(row.http_status, row.cache_write_tokens) for row in ledger_rows()] == [(200, 0), (200, 0)]


def without_cache_prices(model: Model) -> None:
    """The model's prices as a version saved before cache prices existed holds them: a blank cache-write price, which
    charges writes at the input price, and the input price for reads."""
    ModelPrice.objects.filter(model=model).update(
        cache_write_price_per_million=None, cached_input_price_per_million=Decimal("3.00")
    )


def test_a_version_without_cache_prices_gets_no_checkpoint(gateway, acme, claude, anthropic_upstream, opted_in):
    """The gateway sets no checkpoint whose writes the catalog would charge a quarter under the provider's bill."""
    without_cache_prices(claude)

    for _ in range(2):
        assert chat(gateway, acme, claude.name, LONG_PROMPT).status_code == 200

    assert "cache_control" not in str(anthropic_upstream.app.requests)
    assert [(row.cached_tokens, row.cache_write_tokens) for row in ledger_rows()] == [(0, 0)] * 2


def test_a_one_hour_cache_or_a_fifth_breakpoint_is_a_clear_400_naming_the_parameter(
    gateway, acme, claude, bedrock_claude, anthropic_upstream, bedrock_upstream
):
    one_hour = [
        {
            "role": "system",
            "content": [{"type": "text", "text": HANDBOOK, "cache_control": {**EPHEMERAL, "ttl": "1h"}}],
        },
        {"role": "user", "content": QUESTION},
    ]
    five_marks = [
        {
            "role": "system",
            "content": [{"type": "text", "text": f"Rule {n}.", "cache_control": EPHEMERAL} for n in range(5)],
        },
        {"role": "user", "content": QUESTION},
    ]

    refusals = [
        chat(gateway, acme, model.name, messages)
        for model in (claude, bedrock_claude)
        for messages in (one_hour, five_marks)
    ]

    errors = [refused.json()["error"] for refused in refusals]
    assert [refused.status_code for refused in refusals] == [400] * 4
    assert [(error["type"], error["param"], error["code"]) for error in errors] == [
        ("invalid_request_error", "messages[0].content[0].cache_control.ttl", "unsupported_parameter"),
        ("invalid_request_error", "messages[0].content[4].cache_control", "invalid_value"),
    ] * 2
    assert "twice the input price" in errors[0]["message"] and "at most 4" in errors[1]["message"]
    assert anthropic_upstream.app.requests == [] and bedrock_upstream.app.requests == []


def test_a_one_hour_cache_is_refused_on_v1_messages_too(gateway, acme, claude, anthropic_upstream):
    body = {
        "model": claude.name,
        "max_tokens": 50,
        "system": [{"type": "text", "text": HANDBOOK, "cache_control": {**EPHEMERAL, "ttl": "1h"}}],
        "messages": [{"role": "user", "content": QUESTION}],
    }

    refused = httpx.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": acme.key}, timeout=30)

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and "cache_control.ttl" in error["message"]
    assert anthropic_upstream.app.requests == []
    assert {row.http_status for row in ledger_rows()} == {400}


def test_the_worst_case_reserves_the_prompt_at_the_write_price_where_a_checkpoint_may_be_set(
    gateway, acme, claude, opted_in
):
    budget_create(tenant=acme.tenant, limit_usd=Decimal("0.000001"))
    # Claude bills its own tokenizer's count, which tiktoken's can fall short of: the margin covers it.
    prompt_tokens = math.ceil(count_chat_tokens(LONG_PROMPT, model=claude.upstream_name) * PROMPT_MARGIN)

    refused = chat(gateway, acme, claude.name, LONG_PROMPT)

    worst_case = (prompt_tokens * Decimal("3.75") + 50 * Decimal("15.00")) / MILLION
    assert refused.status_code == 429
    assert f"worst case of ${format_cost(worst_case)}" in refused.json()["error"]["message"]
    provider_cache(acme, "off")
    plain = chat(gateway, acme, claude.name, LONG_PROMPT)
    worst_case = (prompt_tokens * Decimal("3.00") + 50 * Decimal("15.00")) / MILLION
    assert f"worst case of ${format_cost(worst_case)}" in plain.json()["error"]["message"]


def test_openai_automatic_caching_counts_under_the_same_lever(gateway, acme):
    for _ in range(2):
        assert chat(gateway, acme, acme.small.name, LONG_PROMPT).status_code == 200

    first, second = ledger_rows()
    assert first.cached_tokens == 0 and first.saved_provider_cache_usd == 0
    assert second.cached_tokens >= 1024
    # The mock prices like gpt-4o-mini: a cached token costs 0.075 per million instead of 0.15.
    assert second.saved_provider_cache_usd == second.cached_tokens * Decimal("0.075") / MILLION


def test_the_levers_saving_appears_in_the_usage_api_and_on_the_dashboard(client, gateway, acme, claude, opted_in):
    for _ in range(3):
        assert chat(gateway, acme, claude.name, LONG_PROMPT).status_code == 200
    rows = ledger_rows()
    expected = sum((catalog_saving(row) for row in rows), Decimal(0))
    assert (
        expected
        == (2 * rows[1].cached_tokens * Decimal("2.70") - rows[0].cache_write_tokens * Decimal("0.75")) / MILLION
    )
    finance = UserFactory(username="acme-finance", is_staff=True)
    membership_set(tenant=acme.tenant, user=finance, role=Role.FINANCE)
    client.force_login(finance)
    today = timezone.now().astimezone(tenant_zone(tenant=acme.tenant)).date()
    days = {"tenant": acme.tenant.slug, "since": (today - timedelta(days=1)).isoformat(), "until": today.isoformat()}

    listed = client.get("/api/usage/", days).json()["results"]
    grouped = client.get("/api/usage/", {**days, "group_by": "model"}).json()["results"]

    by_request = {row["request_id"]: row for row in listed}
    for row in rows:
        assert by_request[row.request_id]["saved_provider_cache_usd"] == format_cost(catalog_saving(row))
        assert by_request[row.request_id]["cache_write_tokens"] == row.cache_write_tokens
    assert [(group["model"], group["saved_provider_cache_usd"]) for group in grouped] == [
        (claude.name, format_cost(expected))
    ]
    usage_rollups_refresh()
    dashboard = dashboard_build(tenant=acme.tenant, since=today - timedelta(days=1), until=today)
    assert dashboard.totals.savings_by_lever["provider_cache"] == expected
    assert dashboard.chart_data()["savings"]["Provider prompt cache"] == cents(expected)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = client.get(reverse("admin:billing_usage_dashboard"), {"tenant": acme.tenant.pk}).content.decode()
    assert (
        f'<tr id="saved-provider_cache"><th>Provider prompt cache</th><td class="num saved">{cents(expected)}</td>'
        in page
    )
