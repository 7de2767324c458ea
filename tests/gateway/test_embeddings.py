"""POST /v1/embeddings through the live gateway: the official SDK, routing, caps, budgets, exact cache, ledger."""

import base64
from decimal import ROUND_HALF_EVEN, Decimal

import httpx
import numpy as np
import openai
import pytest
from django.utils import timezone

from billing.budgets.services import budget_counter_check, budget_create, budget_update
from billing.models import UsageRecord
from routing.cache.store import cache_writes_flush
from routing.models import ModelKind
from routing.policy.drafts import policy_draft_replace
from routing.services import routing_policy_create, routing_policy_publish, tenant_model_access_set
from routing.tokens import count_embedding_tokens
from tests.factories import ModelFactory, ProviderFactory
from tests.gateway.test_cost_parameters_live import ROUTER_FIELDS

EMBED_PRICE = Decimal("0.02")
EMBED_LARGE_PRICE = Decimal("0.13")
# The mock's default vector length, as text-embedding-3-small's.
DIMENSIONS = 1536
TEXTS = ["The refund window for annual plans is 30 days.", "Invoices are sent on the first of the month."]


def embedding_model(setup, *, name: str, price: Decimal = EMBED_PRICE, upstream: str = "text-embedding-3-small", **kw):
    return ModelFactory(
        name=name,
        kind=ModelKind.EMBEDDING,
        provider=kw.pop("provider", setup.small.provider),
        upstream_name=upstream,
        context_window=kw.pop("context_window", 8191),
        input_price_per_million=price,
        cached_input_price_per_million=price,
        output_price_per_million=Decimal(0),
    )


def allow(setup, *models):
    tenant_model_access_set(
        tenant=setup.tenant, allowed_models=[setup.small, setup.large, *models], default_model=setup.small
    )


@pytest.fixture
def acme_embed(acme):
    model = embedding_model(acme, name="acme-embed")
    allow(acme, model)
    return model


@pytest.fixture
def gateway(gateway):
    """The live gateway, whose queued cache writes land before the test's rows are flushed."""
    yield gateway
    cache_writes_flush()


def embed(gateway, setup, body, headers=None):
    return httpx.post(
        f"{gateway.url}/v1/embeddings",
        json=body,
        headers={"authorization": f"Bearer {setup.key}", **(headers or {})},
        timeout=30,
    )


def cost_of(tokens: int, price: Decimal) -> Decimal:
    return (tokens * price / Decimal(1_000_000)).quantize(Decimal("0.0000000001"), rounding=ROUND_HALF_EVEN)


def ledger(response) -> UsageRecord:
    return UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])


def publish(setup, rules):
    policy = routing_policy_create(tenant=setup.tenant)
    policy_draft_replace(policy=policy, document={"aliases": {}, "rules": rules})
    routing_policy_publish(policy=policy, actor=None)


def test_the_sdk_s_embeddings_are_routed_metered_and_priced_from_the_catalog(openai_client, acme, acme_embed):
    raw = openai_client.embeddings.with_raw_response.create(model=acme_embed.name, input=TEXTS)
    result = raw.parse()

    # The SDK asks for base64 and decodes it: two unit vectors of the mock's length, one per input, in order.
    assert [item.index for item in result.data] == [0, 1]
    vectors = [np.array(item.embedding) for item in result.data]
    assert all(len(vector) == DIMENSIONS for vector in vectors)
    assert all(abs(np.linalg.norm(vector) - 1) < 1e-5 for vector in vectors)
    assert not np.allclose(vectors[0], vectors[1])
    tokens = sum(count_embedding_tokens(TEXTS, model="text-embedding-3-small"))
    assert result.usage.prompt_tokens == tokens
    record = UsageRecord.objects.unscoped().get()
    assert (record.endpoint, record.requested_model, record.served_model) == (
        "/v1/embeddings",
        acme_embed.name,
        acme_embed.name,
    )
    assert (record.prompt_tokens, record.completion_tokens, record.usage_estimated) == (tokens, 0, False)
    assert record.cost_usd == cost_of(tokens, EMBED_PRICE) > 0
    assert record.price_version == acme_embed.price_in_force()
    assert (record.tenant, record.api_key, record.http_status, record.cache_status) == (
        acme.tenant,
        acme.api_key,
        200,
        "bypass",
    )
    assert raw.headers["x-llmops-request-id"] == record.request_id
    assert raw.headers["x-llmops-model"] == acme_embed.name
    assert Decimal(raw.headers["x-llmops-cost-usd"]) == record.cost_usd
    assert float(raw.headers["x-llmops-overhead-ms"]) >= 0


def test_the_same_input_embeds_the_same_whatever_the_encoding(gateway, acme, acme_embed):
    as_floats = embed(gateway, acme, {"model": acme_embed.name, "input": TEXTS[0], "encoding_format": "float"})
    as_base64 = embed(gateway, acme, {"model": acme_embed.name, "input": TEXTS[0], "encoding_format": "base64"})

    floats = as_floats.json()["data"][0]["embedding"]
    assert isinstance(floats, list) and len(floats) == DIMENSIONS
    decoded = np.frombuffer(base64.b64decode(as_base64.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats)


def test_dimensions_user_and_token_arrays_are_passed_on(gateway, acme, acme_embed):
    response = embed(
        gateway,
        acme,
        {"model": acme_embed.name, "input": [[101, 2023, 318], [42]], "dimensions": 64, "user": "customer-7"},
    )

    assert response.status_code == 200, response.text
    assert [len(item["embedding"]) for item in response.json()["data"]] == [64, 64]
    assert response.json()["usage"]["prompt_tokens"] == 4
    assert (ledger(response).prompt_tokens, ledger(response).customer) == (4, "customer-7")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({}, "missing_required_parameter", "input"),
        ({"input": []}, "empty_array", "input"),
        ({"input": ""}, "invalid_value", "input"),
        ({"input": ["fine", ""]}, "invalid_value", "input[1]"),
        ({"input": ["fine", 7]}, "invalid_type", "input[1]"),
        ({"input": [[1, "two"]]}, "invalid_type", "input[0][1]"),
        ({"input": [[1, -2]]}, "invalid_value", "input[0][1]"),
        ({"input": [[1, 2], "a"]}, "invalid_type", "input[1]"),
        ({"input": ["a", "b", [1, 2]]}, "invalid_type", "input[2]"),
        ({"input": [1, "a"]}, "invalid_type", "input[1]"),
        ({"input": [1, 2, "a"]}, "invalid_type", "input[2]"),
        ({"input": [1, [2]]}, "invalid_type", "input[1]"),
        ({"input": [1, None]}, "invalid_type", "input[1]"),
        ({"input": [1, -2]}, "invalid_value", "input[1]"),
        ({"input": {"text": "hi"}}, "invalid_type", "input"),
        ({"input": ["x"] * 2049}, "invalid_value", "input"),
        ({"input": "hi", "encoding_format": "hex"}, "invalid_value", "encoding_format"),
        ({"input": "hi", "dimensions": 0}, "invalid_value", "dimensions"),
        ({"input": "hi", "user": 7}, "invalid_type", "user"),
        ({"input": "hi", "modalities": 5}, "invalid_type", "modalities"),
        ({"input": "hi", "modalities": True}, "invalid_type", "modalities"),
    ],
)
def test_bad_input_is_an_openai_400_that_costs_nothing(gateway, acme, acme_embed, body, code, param):
    response = embed(gateway, acme, {"model": acme_embed.name, **body})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    record = ledger(response)
    assert (record.endpoint, record.http_status, record.error_code, record.cost_usd) == (
        "/v1/embeddings",
        400,
        code,
        0,
    )


@pytest.mark.parametrize(("field", "value"), ROUTER_FIELDS.items(), ids=ROUTER_FIELDS.keys())
def test_a_router_field_chat_refuses_is_refused_and_nothing_is_sent(
    gateway, acme, acme_embed, mock_upstream, field, value
):
    """A router upstream reads them on embeddings too: another model than the one priced, or the call and its
    provider key sent elsewhere (``api_base``)."""
    served_before = mock_upstream.app.requests_served

    response = embed(gateway, acme, {"model": acme_embed.name, "input": TEXTS, field: value})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "unsupported_parameter", field)
    assert error["message"].startswith(f"'{field}' is not supported by this gateway: ")
    assert mock_upstream.app.requests_served == served_before
    record = ledger(response)
    assert (record.endpoint, record.http_status, record.error_code, record.cost_usd) == (
        "/v1/embeddings",
        400,
        "unsupported_parameter",
        0,
    )


def test_a_list_opening_with_a_token_is_a_token_array_and_its_first_other_item_is_named(gateway, acme, acme_embed):
    response = embed(gateway, acme, {"model": acme_embed.name, "input": [1, 2, "a"]})

    assert response.json()["error"]["message"] == (
        "Invalid type for 'input[2]': expected an integer (a token) as 'input[0]' is (a list cannot mix tokens and "
        "other inputs), but got a string instead."
    )


def test_a_chat_model_and_a_provider_without_embeddings_are_refused_by_name(openai_client, acme, acme_embed):
    anthropic = ProviderFactory(name="anthropic-direct", kind="anthropic", base_url="http://127.0.0.1:9/v1")
    claude_embed = embedding_model(acme, name="claude-embed", provider=anthropic)
    allow(acme, acme_embed, claude_embed)

    with pytest.raises(openai.BadRequestError) as chat_model:
        openai_client.embeddings.create(model=acme.small.name, input="hi")
    with pytest.raises(openai.BadRequestError) as no_api:
        openai_client.embeddings.create(model=claude_embed.name, input="hi")
    with pytest.raises(openai.BadRequestError) as routed:
        openai_client.embeddings.create(model="default", input="hi")

    assert (chat_model.value.code, chat_model.value.param) == ("model_capability_unsupported", "model")
    assert "is a chat model; /v1/embeddings needs a model of kind embedding" in chat_model.value.message
    assert no_api.value.code == "model_capability_unsupported"
    assert "provider anthropic-direct, whose API (anthropic) has no embeddings" in no_api.value.message
    assert f"`{acme.small.name}` (where `default` was routed)" in routed.value.message
    assert set(UsageRecord.objects.unscoped().values_list("error_code", flat=True)) == {"model_capability_unsupported"}


def test_an_embedding_model_cannot_answer_chat(openai_client, acme, acme_embed):
    with pytest.raises(openai.BadRequestError) as excinfo:
        openai_client.chat.completions.create(model=acme_embed.name, messages=[{"role": "user", "content": "hi"}])

    assert (excinfo.value.code, excinfo.value.param) == ("model_capability_unsupported", "model")
    assert "it is an embedding model: send its inputs to /v1/embeddings" in excinfo.value.message


def test_an_embedding_model_cannot_answer_messages_nor_count_their_tokens(gateway, acme, acme_embed):
    """/v1/messages refuses it as chat completions do, in Anthropic's shape, and count_tokens alike."""
    headers = {"x-api-key": acme.key, "anthropic-version": "2023-06-01"}
    body = {"model": acme_embed.name, "messages": [{"role": "user", "content": "hi"}]}

    message = httpx.post(f"{gateway.url}/v1/messages", json={**body, "max_tokens": 8}, headers=headers, timeout=30)
    counted = httpx.post(f"{gateway.url}/v1/messages/count_tokens", json=body, headers=headers, timeout=30)

    for response in (message, counted):
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["type"], error["details"]) == (
            "invalid_request_error",
            {"error_code": "model_capability_unsupported"},
        )
        assert "it is an embedding model: send its inputs to /v1/embeddings" in error["message"]
    assert list(UsageRecord.objects.unscoped().values_list("endpoint", "error_code")) == [
        ("/v1/messages", "model_capability_unsupported")
    ]


def test_a_budget_refuses_inputs_it_cannot_cover(gateway, acme, acme_embed):
    tokens = sum(count_embedding_tokens(TEXTS, model="text-embedding-3-small"))
    # Room for one request's worst case (its inputs at the input price), not two.
    budget_create(
        tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=cost_of(tokens, EMBED_PRICE)
    )
    body = {"model": acme_embed.name, "input": TEXTS}

    first, second = embed(gateway, acme, body), embed(gateway, acme, body)

    assert first.status_code == 200
    assert Decimal(first.headers["x-llmops-budget-remaining-usd"]) == 0
    assert second.status_code == 429
    error = second.json()["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
    assert int(second.headers["retry-after"]) > 0
    refused = ledger(second)
    assert (refused.http_status, refused.error_code, refused.cost_usd) == (429, "budget_exceeded", 0)


def test_a_budget_over_a_worst_case_says_to_send_less(gateway, acme, acme_embed):
    budget_create(tenant=acme.tenant, scope="tenant", period="day", limit_usd=Decimal("0.0000001"))

    response = embed(gateway, acme, {"model": acme_embed.name, "input": TEXTS})

    assert response.status_code == 429
    assert response.json()["error"]["message"].endswith("Send fewer or shorter inputs.")


def test_a_repeated_input_is_an_exact_hit_for_its_tenant_only(gateway, acme, globex, acme_embed, mock_upstream):
    globex_embed = embedding_model(globex, name="globex-embed")
    allow(globex, globex_embed)
    rule = {"priority": 10, "name": "cache-embeddings", "outcome": {"cache_ttl_seconds": 600}}
    publish(acme, [rule])
    publish(globex, [rule])
    body = {"input": TEXTS, "encoding_format": "float"}

    missed = embed(gateway, acme, {"model": acme_embed.name, **body})
    served_before = mock_upstream.app.requests_served
    hit = embed(gateway, acme, {"model": acme_embed.name, **body})
    served_by_the_cache = mock_upstream.app.requests_served - served_before
    other_tenant = embed(gateway, globex, {"model": globex_embed.name, **body})
    other_encoding = embed(gateway, acme, {"model": acme_embed.name, **body, "encoding_format": "base64"})
    other_dimensions = embed(gateway, acme, {"model": acme_embed.name, **body, "dimensions": 32})

    assert missed.headers["x-llmops-cache"] == "miss"
    assert hit.headers["x-llmops-cache"] == "hit-exact"
    assert served_by_the_cache == 0
    assert hit.json()["data"] == missed.json()["data"]
    assert hit.headers["x-llmops-cost-usd"] == "0.0000000000"
    missed_row, hit_row = ledger(missed), ledger(hit)
    assert missed_row.cost_usd > 0
    assert (hit_row.cost_usd, hit_row.saved_cache_usd, hit_row.prompt_tokens) == (0, missed_row.cost_usd, 0)
    assert [r.headers["x-llmops-cache"] for r in (other_tenant, other_encoding, other_dimensions)] == ["miss"] * 3
    assert mock_upstream.app.requests_served - served_before == 3


def test_a_rule_routes_to_a_cheaper_embedding_model_and_caps_each_input(gateway, acme, acme_embed):
    large = embedding_model(acme, name="acme-embed-large", price=EMBED_LARGE_PRICE, upstream="text-embedding-3-large")
    allow(acme, acme_embed, large)
    publish(
        acme,
        [
            {
                "priority": 10,
                "name": "cheaper-embeddings",
                "match": {"requested_models": [large.name]},
                "outcome": {"target_model": acme_embed.name, "prompt_token_cap": 12, "over_cap_action": "reject"},
            }
        ],
    )

    routed = embed(gateway, acme, {"model": large.name, "input": TEXTS})
    capped = embed(gateway, acme, {"model": large.name, "input": [TEXTS[0], "word " * 40]})

    assert routed.status_code == 200, routed.text
    assert routed.headers["x-llmops-model"] == acme_embed.name
    assert "rule=cheaper-embeddings" in routed.headers["x-llmops-route"]
    record = ledger(routed)
    assert record.saved_routing_usd == cost_of(record.prompt_tokens, EMBED_LARGE_PRICE - EMBED_PRICE) > 0
    assert capped.status_code == 400
    assert (capped.json()["error"]["code"], capped.json()["error"]["param"]) == ("token_cap_exceeded", "input[1]")


def test_a_failing_model_falls_back_down_its_rule_s_chain(gateway, acme, acme_embed):
    broken = embedding_model(acme, name="acme-embed-broken", upstream="fail-500")
    allow(acme, acme_embed, broken)
    publish(
        acme,
        [
            {
                "priority": 10,
                "name": "with-fallback",
                "match": {"requested_models": [broken.name]},
                "outcome": {"fallback_models": [acme_embed.name]},
            }
        ],
    )

    response = embed(gateway, acme, {"model": broken.name, "input": "hi"})

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == acme_embed.name
    assert ledger(response).attempts > 1


def test_a_fallback_that_embeds_is_charged_to_its_own_model_budget_and_one_that_is_spent_is_skipped(
    gateway, acme, acme_embed
):
    broken = embedding_model(acme, name="acme-embed-broken", upstream="fail-500")
    allow(acme, acme_embed, broken)
    rule = {"priority": 10, "name": "with-fallback", "match": {"requested_models": [broken.name]}}
    publish(acme, [{**rule, "outcome": {"fallback_models": [acme_embed.name]}}])
    fallback = budget_create(tenant=acme.tenant, scope="tenant_model", model_name=acme_embed.name, period="day",
                             limit_usd=Decimal("1"))  # fmt: skip

    served = embed(gateway, acme, {"model": broken.name, "input": "hi"})

    assert served.status_code == 200, served.text
    check = budget_counter_check(budget=fallback, now=timezone.now())
    assert check.counted_usd == check.ledger_usd == ledger(served).cost_usd > 0

    budget_update(budget=fallback, limit_usd=Decimal("0.0000000001"))
    skipped = embed(gateway, acme, {"model": broken.name, "input": "hi again"})

    assert skipped.status_code >= 500, skipped.text
    assert f"budget-skipped={acme_embed.name}" in skipped.headers["x-llmops-route"]
    assert ledger(skipped).cost_usd == 0
