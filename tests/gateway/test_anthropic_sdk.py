"""The official anthropic SDK, pointed at the live gateway (/v1/messages), must just work: answers, streams and typed
errors, each request with its ledger row priced from the catalog."""

from decimal import ROUND_HALF_EVEN, Decimal

import anthropic
import httpx
import pytest
from anthropic import Anthropic

from billing.budgets.services import budget_create
from billing.models import UsageRecord
from billing.ratelimits import rate_limit_create
from routing.cache.store import cache_writes_flush
from routing.services import provider_create, routing_policy_ensure_default
from routing.tokens import count_chat_tokens
from tests.cache.conftest import cache_policy
from tests.conftest import SMALL_PRICES
from tests.factories import ModelFactory
from tests.providers.anthropic_server import AnthropicServer
from tests.servers import ThreadedServer

QUESTION = "What is the capital of France?"
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


@pytest.fixture(scope="module")
def anthropic_upstream():
    app = AnthropicServer()
    with ThreadedServer(app) as server:
        server.app = app
        yield server


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
    model = ModelFactory(name="claude-sonnet", provider=provider, upstream_name="claude-sonnet-4", **SONNET_PRICES)
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
    ],
)
def test_what_anthropic_requires_or_the_gateway_cannot_carry_is_a_clear_400(gateway, acme, body, words):
    headers = {"x-api-key": acme.key, "anthropic-version": "2023-06-01"}

    response = httpx.post(f"{gateway.url}/v1/messages", json={"model": acme.small.name, **body}, headers=headers)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"]
    assert only_record().http_status == 400


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
    assert error.response.headers["x-should-retry"] == "false"
    assert int(error.response.headers["retry-after"]) > 0
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


def test_count_tokens_counts_as_the_ledger_does_and_records_nothing(client, acme):
    messages = [{"role": "user", "content": QUESTION}]

    counted = client.messages.count_tokens(model=acme.small.name, system="Be brief.", messages=messages)
    client.messages.create(model=acme.small.name, max_tokens=4, system="Be brief.", messages=messages)

    assert counted.input_tokens == only_record().prompt_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=messages)


def test_a_stream_that_breaks_off_ends_with_an_error_event(client, acme):
    broken = ModelFactory(name="acme-broken", provider=acme.small.provider, upstream_name="mock-break")
    acme.tenant.model_access.allowed_models.add(broken)

    with pytest.raises(anthropic.APIStatusError) as excinfo:
        list(
            client.messages.create(
                model=broken.name, max_tokens=10, messages=[{"role": "user", "content": "Hi"}], stream=True
            )
        )

    assert (excinfo.value.type, excinfo.value.error_code) == ("api_error", None)
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
