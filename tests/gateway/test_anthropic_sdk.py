"""The official anthropic SDK, pointed at the live gateway (/v1/messages), must just work: answers, streams and typed
errors, each request with its ledger row priced from the catalog."""

import time
from decimal import ROUND_HALF_EVEN, Decimal

import anthropic
import httpx
import pytest
from anthropic import Anthropic

from billing.budgets.services import budget_create
from billing.models import UsageRecord
from billing.ratelimits import rate_limit_create
from core.redis import sync_redis
from llmops.gateway.concurrency import KEY_PREFIX
from routing import tokens
from routing.cache.store import cache_writes_flush
from routing.services import provider_create, routing_policy_ensure_default
from routing.tokens import count_chat_tokens
from tests.cache.conftest import cache_policy
from tests.conftest import SMALL_PRICES
from tests.factories import ModelFactory, ProviderFactory
from tests.gateway.test_fairness_live import wait_until_none_held
from tests.gateway.test_routing_live import publish

QUESTION = "What is the capital of France?"
ONE_HOUR_CACHE = {"type": "ephemeral", "ttl": "1h"}
EMPTY_URL_IMAGE = {"type": "image", "source": {"type": "url", "url": ""}}
EMPTY_DATA_IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
SONNET_PRICES = {
    "input_price_per_million": Decimal("3.00"),
    "cached_input_price_per_million": Decimal("0.30"),
    "cache_write_price_per_million": Decimal("3.75"),
    "output_price_per_million": Decimal("15.00"),
}


def client_for(gateway, key: str, **options) -> Anthropic:
    return Anthropic(base_url=gateway.url, api_key=key, **{"max_retries": 0, "timeout": 20, **options})


@pytest.fixture
def client(gateway, acme):
    with client_for(gateway, acme.key) as sdk:
        yield sdk


@pytest.fixture
def claude(acme, anthropic_upstream):
    anthropic_upstream.app.requests.clear()
    anthropic_upstream.app.cached_prefixes.clear()
    provider = provider_create(
        name="anthropic-local",
        kind="anthropic",
        base_url=f"{anthropic_upstream.url}/v1",
        credential=anthropic_upstream.app.api_key,
    )
    model = ModelFactory(
        name="claude-sonnet", provider=provider, upstream_name="claude-sonnet-4-20250514", **SONNET_PRICES
    )
    acme.tenant.model_access.allowed_models.add(model)
    return model


def small_cost(record: UsageRecord) -> Decimal:
    """What the catalog's prices of the small model make of the row's tokens (no cached tokens here)."""
    cost = (record.prompt_tokens * SMALL_PRICES[0] + record.completion_tokens * SMALL_PRICES[2]) / Decimal(1_000_000)
    return cost.quantize(Decimal("1e-10"), rounding=ROUND_HALF_EVEN)


def sonnet_cost(record: UsageRecord) -> Decimal:
    uncached = record.prompt_tokens - record.cached_tokens - record.cache_write_tokens
    cost = (
        uncached * SONNET_PRICES["input_price_per_million"]
        + record.cached_tokens * SONNET_PRICES["cached_input_price_per_million"]
        + record.cache_write_tokens * SONNET_PRICES["cache_write_price_per_million"]
        + record.completion_tokens * SONNET_PRICES["output_price_per_million"]
    ) / Decimal(1_000_000)
    return cost.quantize(Decimal("1e-10"), rounding=ROUND_HALF_EVEN)


def only_record() -> UsageRecord:
    return UsageRecord.objects.unscoped().get()


def test_a_message_through_the_sdk_is_answered_recorded_and_priced(client, acme):
    raw = client.messages.with_raw_response.create(
        model=acme.small.name,
        max_tokens=16,
        system="Answer in one word.",
        messages=[{"role": "user", "content": QUESTION}],
        metadata={"user_id": "customer-42"},
    )
    message = raw.parse()

    record = only_record()
    assert message.id == "msg_" + record.request_id.removeprefix("req_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "mock-small")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text.startswith("Mock answer to: What is the capital")
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (record.prompt_tokens, record.completion_tokens)
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (0, 0)
    system_and_question = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": QUESTION}]
    assert record.prompt_tokens == count_chat_tokens(system_and_question, model="mock-small")
    assert record.completion_tokens == 16
    assert (record.tenant, record.team, record.api_key) == (acme.tenant, acme.team, acme.api_key)
    assert (record.endpoint, record.requested_model, record.served_model) == (
        "/v1/messages",
        acme.small.name,
        acme.small.name,
    )
    assert (record.http_status, record.error_code, record.is_stream) == (200, "", False)
    assert record.customer == "customer-42"
    assert record.cost_usd == small_cost(record) > 0
    assert Decimal(raw.headers["x-llmops-cost-usd"]) == record.cost_usd
    assert raw.headers["x-llmops-request-id"] == raw.headers["request-id"] == record.request_id
    assert raw.headers["x-llmops-model"] == acme.small.name
    assert raw.headers["x-llmops-cache"] == "bypass"
    assert float(raw.headers["x-llmops-overhead-ms"]) >= 0


def test_a_streamed_message_through_the_sdk_helper(client, acme):
    with client.messages.stream(
        model=acme.small.name, max_tokens=8, messages=[{"role": "user", "content": "Tell me a story"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    record = only_record()
    assert text.startswith("Mock answer to: Tell me") and final.content[0].text == text
    assert final.id == "msg_" + record.request_id.removeprefix("req_")
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (record.prompt_tokens, record.completion_tokens)
    assert record.completion_tokens == 8 and record.prompt_tokens > 0
    assert (record.endpoint, record.is_stream, record.usage_estimated, record.http_status) == (
        "/v1/messages",
        True,
        False,
        200,
    )
    assert record.cost_usd == small_cost(record) > 0


def test_a_stream_true_gives_anthropic_events_in_order(client, acme):
    events = list(
        client.messages.create(
            model=acme.small.name, max_tokens=5, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )

    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 5,  # the mock streams a token a chunk
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    record = only_record()
    assert events[0].message.usage.input_tokens == record.prompt_tokens  # the gateway's count: the mock counts alike
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == record.completion_tokens == 5
    assert "".join(event.delta.text for event in events if event.type == "content_block_delta").startswith("Mock")


def test_the_key_is_taken_from_x_api_key(gateway, acme):
    body = {"model": acme.small.name, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"x-api-key": acme.key, "anthropic-version": "2023-06-01"}

    response = httpx.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=20)

    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"
    with Anthropic(base_url=gateway.url, api_key=None, default_headers={"x-api-key": acme.key}, max_retries=0) as sdk:
        assert sdk.messages.create(model=acme.small.name, max_tokens=4, messages=body["messages"]).usage.output_tokens
    assert UsageRecord.objects.unscoped().filter(api_key=acme.api_key, http_status=200).count() == 2


def test_with_both_headers_the_key_in_x_api_key_is_the_one_used(gateway, acme, globex):
    body = {"model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}

    acme_answered = httpx.post(
        f"{gateway.url}/v1/messages",
        json=body,
        headers={"x-api-key": acme.key, "authorization": f"Bearer {globex.key}"},
        timeout=20,
    )
    refused = httpx.post(
        f"{gateway.url}/v1/messages",
        json=body,
        headers={"x-api-key": "llmops-000000000000-not-a-real-secret", "authorization": f"Bearer {acme.key}"},
        timeout=20,
    )

    assert acme_answered.status_code == 200, acme_answered.text
    assert acme_answered.headers["x-llmops-model"] == acme.small.name
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert [(record.tenant, record.http_status) for record in UsageRecord.objects.unscoped().all()] == [
        (acme.tenant, 200)
    ]


def test_a_bad_or_missing_key_raises_authentication_error(gateway, acme):
    with (
        client_for(gateway, "llmops-000000000000-not-a-real-secret") as sdk,
        pytest.raises(anthropic.AuthenticationError) as excinfo,
    ):
        sdk.messages.create(model=acme.small.name, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    missing = httpx.post(f"{gateway.url}/v1/messages", json={}, timeout=20)

    assert (excinfo.value.status_code, excinfo.value.type, excinfo.value.error_code) == (
        401,
        "authentication_error",
        "invalid_api_key",
    )
    assert excinfo.value.request_id.startswith("req_")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "x-api-key" in missing.json()["error"]["message"]
    assert not UsageRecord.objects.unscoped().exists()


def test_bad_input_raises_bad_request_error_in_anthropic_shape_and_is_recorded(client, acme):
    with pytest.raises(anthropic.BadRequestError) as excinfo:
        client.messages.create(model=acme.small.name, max_tokens=0, messages=[{"role": "user", "content": "Hi"}])

    error = excinfo.value
    assert (error.type, error.error_code) == ("invalid_request_error", "invalid_value")
    assert error.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: Input should be between 1 and 1000000, not 0",
            "details": {"error_code": "invalid_value"},
        },
        "request_id": error.request_id,
    }
    record = only_record()
    assert (record.request_id, record.endpoint, record.http_status) == (error.request_id, "/v1/messages", 400)
    assert (record.error_code, record.cost_usd) == ("invalid_value", Decimal(0))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], "tools": [{"name": "t"}]}, "tool use"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]}, "'document' blocks"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], "cache_control": ONE_HOUR_CACHE},
            "cache_control.ttl: not supported: a 1h cache write is billed at twice the input price",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": ["text"], "text": "Hi"}]}]},
            "messages.0.content.0.type: Input should be a string, not an array",
        ),
        # Refused by the client's own path, not by the chat message it becomes (`system` is one more).
        (
            {"max_tokens": 5, "system": "Be brief.", "messages": [{"role": "user", "content": [EMPTY_URL_IMAGE]}]},
            "messages.0.content.0.source.url: String should have at least 1 character",
        ),
        # No image to answer, or to bill.
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [EMPTY_DATA_IMAGE]}]},
            "messages.0.content.0.source.data: String should have at least 1 character",
        ),
    ],
)
def test_what_anthropic_requires_or_the_gateway_cannot_carry_is_a_clear_400(gateway, acme, body, words):
    headers = {"x-api-key": acme.key, "anthropic-version": "2023-06-01"}

    response = httpx.post(f"{gateway.url}/v1/messages", json={"model": acme.small.name, **body}, headers=headers)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"]
    record = only_record()
    assert (record.http_status, record.cost_usd) == (400, 0)


def test_malformed_json_is_an_invalid_request_error(gateway, acme):
    headers = {"x-api-key": acme.key, "content-type": "application/json"}

    response = httpx.post(f"{gateway.url}/v1/messages", content=b'{"model": ', headers=headers)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["details"] == {"error_code": "invalid_json"}


def test_a_wrong_method_is_an_anthropic_shaped_405(gateway, acme):
    response = httpx.get(f"{gateway.url}/v1/messages", headers={"x-api-key": acme.key})

    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["details"] == {"error_code": "method_not_allowed"}


def test_an_unknown_model_raises_not_found_error(client):
    with pytest.raises(anthropic.NotFoundError) as excinfo:
        client.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])

    assert (excinfo.value.type, excinfo.value.error_code) == ("not_found_error", "model_not_found")
    assert only_record().error_code == "model_not_found"


def test_tenants_are_isolated(gateway, acme, globex):
    """A key of one tenant cannot use another's models, and its requests are charged to its own tenant only."""
    with client_for(gateway, globex.key) as sdk:
        with pytest.raises(anthropic.PermissionDeniedError) as excinfo:
            sdk.messages.create(model=acme.small.name, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        answered = sdk.messages.create(model="default", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])

    assert (excinfo.value.type, excinfo.value.error_code) == ("permission_error", "model_not_allowed")
    assert answered.content[0].text.startswith("Mock answer")
    records = UsageRecord.objects.unscoped().order_by("created_at")
    assert [(record.tenant, record.http_status) for record in records] == [(globex.tenant, 403), (globex.tenant, 200)]
    assert records[1].served_model == globex.small.name
    assert not UsageRecord.objects.for_tenant(acme.tenant.pk).exists()


def test_a_budget_refusal_raises_rate_limit_error_that_the_sdk_does_not_retry(gateway, acme):
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("0.000001"))

    with client_for(gateway, acme.key, max_retries=2) as sdk, pytest.raises(anthropic.RateLimitError) as excinfo:
        sdk.messages.create(model=acme.small.name, max_tokens=1000, messages=[{"role": "user", "content": "Hi"}])

    error = excinfo.value
    assert (error.status_code, error.type, error.error_code) == (429, "rate_limit_error", "budget_exceeded")
    # Its worst case is over the budget's whole limit: no period can hold it, so no Retry-After either.
    assert error.response.headers["x-should-retry"] == "false" and "retry-after" not in error.response.headers
    record = only_record()  # one request: the SDK, allowed two retries, made none
    assert (record.http_status, record.error_code, record.cost_usd) == (429, "budget_exceeded", Decimal(0))


def test_a_rate_limit_raises_rate_limit_error_with_retry_after(client, acme):
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, requests_per_minute=1)
    client.messages.create(model=acme.small.name, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])

    with pytest.raises(anthropic.RateLimitError) as excinfo:
        client.messages.create(model=acme.small.name, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])

    assert excinfo.value.error_code == "rate_limit_exceeded"
    assert int(excinfo.value.response.headers["retry-after"]) > 0
    assert "x-should-retry" not in excinfo.value.response.headers
    assert [record.http_status for record in UsageRecord.objects.unscoped().order_by("created_at")] == [200, 429]


def test_auto_routes_through_the_tenant_policy(client, acme):
    routing_policy_ensure_default(tenant=acme.tenant)

    raw = client.messages.with_raw_response.create(
        model="auto", max_tokens=4, messages=[{"role": "user", "content": "Say hi"}]
    )

    record = only_record()
    assert raw.parse().type == "message"
    assert "rule=" in raw.headers["x-llmops-route"]
    assert record.requested_model == "auto" and record.served_model in (acme.small.name, acme.large.name)
    assert record.policy_version is not None


def test_a_repeated_message_is_answered_from_the_cache_plain_and_streamed(client, acme, mock_upstream):
    cache_policy(acme, nondeterministic=True)
    ask = {"model": acme.small.name, "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]}
    first = client.messages.with_raw_response.create(**ask)
    cache_writes_flush()
    served = mock_upstream.app.requests_served

    second = client.messages.with_raw_response.create(**ask)
    with client.messages.stream(**ask) as stream:
        streamed = stream.get_final_message()
    cache_writes_flush()  # the hits' counts, before the test's rows are deleted

    assert mock_upstream.app.requests_served == served
    assert (first.headers["x-llmops-cache"], second.headers["x-llmops-cache"]) == ("miss", "hit-exact")
    answers = [first.parse(), second.parse(), streamed]
    assert len({answer.content[0].text for answer in answers}) == 1
    assert len({answer.usage.to_json() for answer in answers}) == 1  # a hit reports the stored answer's usage
    assert len({answer.id for answer in answers}) == 3
    records = UsageRecord.objects.unscoped().order_by("created_at")
    assert [(record.cache_status, record.is_stream) for record in records] == [
        ("miss", False),
        ("hit-exact", False),
        ("hit-exact", True),
    ]
    assert records[0].cost_usd > 0 and [record.cost_usd for record in records[1:]] == [Decimal(0), Decimal(0)]


def test_an_openai_models_refusal_is_an_anthropic_refusal_plain_and_streamed(client, acme):
    """OpenAI says a refusal in `message.refusal` (content null), Anthropic with `stop_reason: "refusal"`: its
    explanation is the text, not an empty answer."""
    refuser = ModelFactory(name="acme-refuser", provider=acme.small.provider, upstream_name="mock-refuse")
    acme.tenant.model_access.allowed_models.add(refuser)
    ask = {"model": refuser.name, "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]}

    plain = client.messages.create(**ask)
    with client.messages.stream(**ask) as stream:
        streamed = stream.get_final_message()

    for answer in (plain, streamed):
        assert answer.stop_reason == "refusal"
        assert answer.content[0].text.startswith("Mock answer to:")
    assert plain.content[0].text == streamed.content[0].text


def test_count_tokens_counts_as_the_ledger_does_and_records_nothing(client, acme):
    messages = [{"role": "user", "content": QUESTION}]

    counted = client.messages.count_tokens(model=acme.small.name, system="Be brief.", messages=messages)
    client.messages.create(model=acme.small.name, max_tokens=4, system="Be brief.", messages=messages)

    assert counted.input_tokens == only_record().prompt_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=messages)


def test_count_tokens_counts_against_the_key_rate_limit_and_records_nothing(client, acme):
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, requests_per_minute=1)
    messages = [{"role": "user", "content": QUESTION}]
    raw = client.messages.with_raw_response.count_tokens(model=acme.small.name, messages=messages)

    with pytest.raises(anthropic.RateLimitError) as counting:
        client.messages.count_tokens(model=acme.small.name, messages=messages)
    with pytest.raises(anthropic.RateLimitError) as asking:
        client.messages.create(model=acme.small.name, max_tokens=4, messages=messages)

    assert raw.parse().input_tokens > 0
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert (counting.value.type, counting.value.error_code) == ("rate_limit_error", "rate_limit_exceeded")
    assert int(counting.value.response.headers["retry-after"]) > 0
    assert asking.value.error_code == "rate_limit_exceeded"
    assert [(record.endpoint, record.http_status) for record in UsageRecord.objects.unscoped().all()] == [
        ("/v1/messages", 429)
    ]


def test_count_tokens_counts_against_its_end_customers_rate_limit(client, acme):
    """Its customer is named as on /v1/messages: metadata.user_id, or the x-llmops-customer header, which wins."""
    rate_limit_create(tenant=acme.tenant, scope="customer", requests_per_minute=1)
    messages = [{"role": "user", "content": QUESTION}]

    def count(**options) -> int:
        return client.messages.count_tokens(model=acme.small.name, messages=messages, **options).input_tokens

    alice = count(extra_body={"metadata": {"user_id": "alice"}})
    with pytest.raises(anthropic.RateLimitError) as by_header:
        count(extra_headers={"x-llmops-customer": "alice"}, extra_body={"metadata": {"user_id": "bob"}})
    bob = count(extra_body={"metadata": {"user_id": "bob"}})
    anonymous = [count() for _ in range(2)]
    with pytest.raises(anthropic.RateLimitError) as asking:
        client.messages.create(model=acme.small.name, max_tokens=4, messages=messages, metadata={"user_id": "alice"})

    assert alice == bob == anonymous[0] == anonymous[1] > 0
    assert "customer 'alice'" in by_header.value.body["error"]["message"]
    assert asking.value.body["error"]["details"]["error_code"] == "rate_limit_exceeded"
    assert [(row.endpoint, row.http_status, row.customer) for row in UsageRecord.objects.unscoped().all()] == [
        ("/v1/messages", 429, "alice")
    ]


def test_count_tokens_holds_one_of_the_tenant_slots_for_requests_in_flight(client, acme):
    acme.tenant.max_inflight_requests = 1
    acme.tenant.save()
    messages = [{"role": "user", "content": QUESTION}]
    client.messages.count_tokens(model=acme.small.name, messages=messages)
    slots = sync_redis()
    wait_until_none_held(acme.tenant)
    slots.zadd(KEY_PREFIX + str(acme.tenant.pk), {"req_elsewhere": int(time.time() * 1000) + 60_000})

    with pytest.raises(anthropic.RateLimitError) as excinfo:
        client.messages.count_tokens(model=acme.small.name, messages=messages)

    assert excinfo.value.error_code == "tenant_concurrency_limit_exceeded"
    assert slots.zrange(KEY_PREFIX + str(acme.tenant.pk), 0, -1) == [b"req_elsewhere"]
    assert not UsageRecord.objects.unscoped().exists()


def test_count_tokens_refuses_a_prompt_over_the_cap_by_its_length_alone_without_counting_it(gateway, acme, monkeypatch):
    """4.2 MB: over the default template's ceiling (32,000 tokens) by its length alone, as /v1/messages refuses it."""
    routing_policy_ensure_default(tenant=acme.tenant)
    counted = []
    monkeypatch.setattr(tokens, "count_chat_tokens", lambda messages, **options: counted.append(messages) or 0)
    body = {"model": "auto", "messages": [{"role": "user", "content": "refund policy " * 300_000}]}

    response = httpx.post(
        f"{gateway.url}/v1/messages/count_tokens", json=body, headers={"x-api-key": acme.key}, timeout=60
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["details"]) == ("invalid_request_error", {"error_code": "token_cap_exceeded"})
    assert "has at least" in error["message"]
    assert counted == []
    assert not UsageRecord.objects.unscoped().exists()


def test_count_tokens_with_an_alias_counts_and_refuses_as_the_request_would_be(client, acme):
    publish(
        acme,
        [
            {
                "priority": 1,
                "name": "short-only",
                "match": {"requested_models": ["auto"]},
                "outcome": {"prompt_token_cap": 30},
            }
        ],
        aliases={"auto": {"small": acme.small.name, "large": acme.large.name}},
    )
    short = [{"role": "user", "content": QUESTION}]
    long = [{"role": "user", "content": "Tell me everything about the refund policy of the shop. " * 4}]

    counted = client.messages.count_tokens(model="auto", messages=short)
    client.messages.create(model="auto", max_tokens=4, messages=short)
    with pytest.raises(anthropic.BadRequestError) as counting:
        client.messages.count_tokens(model="auto", messages=long)
    with pytest.raises(anthropic.BadRequestError) as asking:
        client.messages.create(model="auto", max_tokens=4, messages=long)

    answered = UsageRecord.objects.unscoped().get(http_status=200)
    assert counted.input_tokens == answered.prompt_tokens > 0
    assert counting.value.error_code == asking.value.error_code == "token_cap_exceeded"
    assert counting.value.body["error"]["message"] == asking.value.body["error"]["message"]
    assert "short-only" in counting.value.body["error"]["message"]


def test_every_model_skipped_by_its_circuit_breaker_is_a_529_and_so_is_its_ledger_row(client, acme):
    provider = ProviderFactory(name="acme-tripped", base_url=acme.small.provider.base_url)
    tripped = ModelFactory(name="acme-tripped-small", provider=provider, upstream_name="mock-small")
    acme.tenant.model_access.allowed_models.add(tripped)
    sync_redis().set(f"llmops:breaker:{provider.name}:{tripped.upstream_name}:open", "1", px=60_000)

    with pytest.raises(anthropic.OverloadedError) as excinfo:
        client.messages.create(model=tripped.name, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])

    assert (excinfo.value.status_code, excinfo.value.type) == (529, "overloaded_error")
    assert excinfo.value.error_code == "upstream_circuit_open"
    record = only_record()
    assert (record.http_status, record.error_code) == (529, "upstream_circuit_open")


def test_a_stream_that_breaks_off_ends_with_an_error_event(client, acme):
    broken = ModelFactory(name="acme-broken", provider=acme.small.provider, upstream_name="mock-break")
    acme.tenant.model_access.allowed_models.add(broken)

    with pytest.raises(anthropic.APIStatusError) as excinfo:
        list(
            client.messages.create(
                model=broken.name, max_tokens=10, messages=[{"role": "user", "content": "Hi"}], stream=True
            )
        )

    assert (excinfo.value.type, excinfo.value.error_code) == ("api_error", "upstream_stream_truncated")
    record = only_record()
    assert (record.http_status, record.error_code) == (502, "upstream_stream_truncated")


def test_claude_behind_the_gateway_with_prompt_caching_and_stop_sequences(client, claude, anthropic_upstream):
    """An Anthropic upstream gets the cache breakpoint the client set; cache writes and reads come back in the usage
    and are priced at the catalog's cache prices; a stop sequence and max_tokens come back as Anthropic's stop
    reasons."""
    system = [{"type": "text", "text": "Policy handbook. " * 400, "cache_control": {"type": "ephemeral"}}]
    ask = {
        "model": claude.name,
        "system": system,
        "messages": [{"role": "user", "content": "What is the refund window?"}],
    }

    first = client.messages.create(max_tokens=50, **ask)
    second = client.messages.create(max_tokens=50, stop_sequences=["refund"], **ask)
    with client.messages.stream(max_tokens=3, **ask) as stream:
        cut = stream.get_final_message()

    sent = anthropic_upstream.app.requests[0]
    assert sent["system"] == system and sent["max_tokens"] == 50
    assert anthropic_upstream.app.requests[1]["stop_sequences"] == ["refund"]
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert (first.stop_reason, first.content[0].text) == ("end_turn", "Echo: What is the refund window?")
    assert (second.stop_reason, second.stop_sequence, second.content[0].text) == (
        "stop_sequence",
        "refund",
        "Echo: What is the ",
    )
    assert (cut.stop_reason, cut.content[0].text) == ("max_tokens", "Echo: What is")
    assert cut.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    records = list(UsageRecord.objects.unscoped().order_by("created_at"))
    for record, message in zip(records, (first, second, cut), strict=True):
        assert record.served_model == claude.name and record.cost_usd == sonnet_cost(record) > 0
        assert record.cache_write_tokens == message.usage.cache_creation_input_tokens
        assert record.cached_tokens == message.usage.cache_read_input_tokens
        assert record.prompt_tokens == (
            message.usage.input_tokens
            + message.usage.cache_creation_input_tokens
            + message.usage.cache_read_input_tokens
        )
        assert record.completion_tokens == message.usage.output_tokens


def test_claude_gets_top_k_and_the_automatic_cache_breakpoint_on_the_last_block(client, claude, anthropic_upstream):
    """A top-level cache_control is Anthropic's automatic caching: the breakpoint on the last block of the request,
    so the prompt is written to the provider's cache, and read back by the same prompt again. (The current SDK no
    longer names top_k; the API takes it.)"""
    handbook = "Policy handbook. " * 400
    ask = {
        "model": claude.name,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": handbook}],
        "cache_control": {"type": "ephemeral"},
        "extra_body": {"top_k": 5},
    }

    first = client.messages.create(**ask)
    second = client.messages.create(**ask)

    sent = anthropic_upstream.app.requests[0]
    assert sent["top_k"] == 5
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": handbook, "cache_control": {"type": "ephemeral"}}]}
    ]
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    records = list(UsageRecord.objects.unscoped().order_by("created_at"))
    assert [record.cache_write_tokens for record in records] == [first.usage.cache_creation_input_tokens, 0]
    assert records[1].cached_tokens == second.usage.cache_read_input_tokens
    assert all(record.cost_usd == sonnet_cost(record) > 0 for record in records)


def test_the_matched_stop_sequence_stays_out_of_chat_completions_answers(gateway, acme, claude):
    """Only /v1/messages shows which stop sequence ended an answer; /v1/chat/completions keeps OpenAI's shape."""
    body = {"model": claude.name, "messages": [{"role": "user", "content": "Where is the refund desk?"}]}
    headers = {"authorization": f"Bearer {acme.key}"}

    plain = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "stop": ["refund"]}, headers=headers)
    streamed = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={**body, "stop": ["refund"], "stream": True}, headers=headers
    )

    choice = plain.json()["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("stop", "Echo: Where is the ")
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    finishing = [line for line in streamed.text.splitlines() if '"finish_reason":"stop"' in line]
    assert len(finishing) == 1 and "stop_reason" not in finishing[0] and "refund" not in streamed.text


def test_a_cached_answer_replayed_as_a_stream_keeps_its_stop_sequence(client, acme, claude):
    cache_policy(acme, nondeterministic=True)
    ask = {
        "model": claude.name,
        "max_tokens": 50,
        "stop_sequences": ["refund"],
        "messages": [{"role": "user", "content": "Where is the refund desk?"}],
    }
    answered = client.messages.create(**ask)
    cache_writes_flush()

    replayed = client.messages.with_raw_response.create(**ask)
    with client.messages.stream(**ask) as stream:
        streamed = stream.get_final_message()
    cache_writes_flush()

    assert replayed.headers["x-llmops-cache"] == "hit-exact"
    for message in (answered, replayed.parse(), streamed):
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "refund")
        assert message.content[0].text == "Echo: Where is the "
    assert [record.cache_status for record in UsageRecord.objects.unscoped().order_by("created_at")] == [
        "miss",
        "hit-exact",
        "hit-exact",
    ]
