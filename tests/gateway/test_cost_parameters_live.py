"""Request fields that decide what an answer costs, through the live gateway to an OpenAI-compatible upstream over
HTTP: a cap on completion tokens reaches the upstream as the bound the gateway reserved, whichever field the upstream
reads, and the fields a router upstream (OpenRouter, a LiteLLM proxy) reads to answer with another model or a paid
feature are refused before anything is sent."""

from decimal import Decimal

import httpx
import pytest

from billing.budgets.services import budget_create
from billing.models import UsageRecord
from tests.conftest import make_tenant_setup
from tests.servers import RecordingUpstream, serving

MESSAGES = [{"role": "user", "content": "Classify this support ticket: my refund has not arrived."}]


class MaxTokensOnlyUpstream(RecordingUpstream):
    """The mock upstream as an OpenAI-compatible server that knows only ``max_tokens``: ``max_completion_tokens`` is
    ignored (dropped before the mock answers). ``chat_bodies`` are the chat requests as the gateway sent them."""

    def forwarded(self, body: dict) -> dict:
        return {name: value for name, value in body.items() if name != "max_completion_tokens"}


@pytest.fixture
def max_tokens_only_upstream():
    yield from serving(MaxTokensOnlyUpstream())


def post(gateway, key: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.mark.parametrize("stream", [False, True])
def test_both_caps_reach_an_upstream_reading_max_tokens_as_the_bound_reserved(
    gateway, max_tokens_only_upstream, stream
):
    """1 token is reserved (max_completion_tokens supersedes max_tokens); an upstream reading max_tokens=100000 would
    write the mock's 24, over the usage ceiling, and the answer would fail as the upstream's."""
    setup = make_tenant_setup(max_tokens_only_upstream.url, slug="bothcaps")
    budget_create(tenant=setup.tenant, limit_usd=Decimal("10"))
    body = {"model": setup.small.name, "messages": MESSAGES, "max_completion_tokens": 1, "max_tokens": 100_000}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}

    response = post(gateway, setup.key, body)

    assert response.status_code == 200, response.text
    sent = max_tokens_only_upstream.app.chat_bodies
    assert [(sent_body["max_tokens"], sent_body["max_completion_tokens"]) for sent_body in sent] == [(1, 1)]
    record = UsageRecord.objects.unscoped().get(tenant=setup.tenant)
    assert (record.http_status, record.completion_tokens) == (200, 1)


ROUTER_FIELDS = {
    "models": ["openai/gpt-4o", "anthropic/claude-3-opus"],
    "route": "fallback",
    "preset": "email-copywriter",
    "provider": {"order": ["OpenAI"], "allow_fallbacks": True},
    "plugins": [{"id": "web", "max_results": 10}],
    "fallbacks": ["gpt-4o"],
    "context_window_fallback_dict": {"mock-small": "gpt-4o"},
    "user_config": {"model_list": [{"model_name": "m", "litellm_params": {"model": "gpt-4o"}}]},
    "num_retries": 5,
    "api_base": "https://collector.example/v1",
    "base_url": "https://collector.example/v1",
    "api_key": "sk-the-clients-own",
    "api_version": "2024-10-21",
}


@pytest.mark.parametrize(("field", "value"), ROUTER_FIELDS.items(), ids=ROUTER_FIELDS.keys())
def test_a_router_field_that_bills_beyond_the_catalog_is_refused_and_nothing_is_sent(
    gateway, acme, mock_upstream, field, value
):
    served_before = mock_upstream.app.requests_served

    response = post(gateway, acme.key, {"model": acme.small.name, "messages": MESSAGES, field: value})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "unsupported_parameter", field)
    assert error["message"].startswith(f"'{field}' is not supported by this gateway: ")
    assert error["message"].endswith("so its cost could not be held within budgets.")
    assert mock_upstream.app.requests_served == served_before
    record = UsageRecord.objects.unscoped().get()
    assert (record.http_status, record.error_code, record.cost_usd) == (400, "unsupported_parameter", Decimal(0))
