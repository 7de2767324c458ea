"""A request compression summarises is admitted by its rate limits and its tenant's cap on requests in flight before
its summary is paid for, and counted once; and a token rate limit's count of the output is the bound sent upstream."""

import time

import pytest

from billing.models import UsageRecord
from billing.ratelimits import rate_limit_create
from core.redis import sync_redis
from llmops.gateway.chat.summaries import SUMMARY_MAX_TOKENS
from llmops.gateway.concurrency import KEY_PREFIX
from routing.tokens import count_chat_tokens
from tests.conftest import make_tenant_setup
from tests.gateway.test_fairness_live import limit_inflight, wait_until_none_held
from tests.gateway.test_routing_live import chat, publish
from tests.gateway.test_worst_case_live import COMPRESS, long_conversation, rows_of
from tests.servers import RecordingUpstream, serving

MESSAGES = [{"role": "user", "content": "Classify this support ticket: my refund has not arrived."}]


def compressed(gateway, setup):
    return chat(gateway, setup, {"model": setup.small.name, "messages": long_conversation(), "max_tokens": 10})


def test_a_request_over_its_requests_per_minute_pays_for_no_summary_and_each_is_counted_once(
    gateway, acme, mock_upstream
):
    publish(acme, COMPRESS)
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, requests_per_minute=2)

    answered = [compressed(gateway, acme) for _ in range(2)]
    served_before = mock_upstream.app.requests_served
    refused = compressed(gateway, acme)

    assert [response.status_code for response in answered] == [200, 200], answered[-1].text
    assert [response.headers["x-ratelimit-remaining-requests"] for response in answered] == ["1", "0"]
    assert all(rows_of(response)[1] is not None for response in answered), "each answered request had its summary"
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert mock_upstream.app.requests_served == served_before
    main, summary = rows_of(refused)
    assert (main.http_status, main.error_code, summary) == (429, "rate_limit_exceeded", None)


def test_a_token_rate_limit_the_dropped_turns_alone_exceed_still_answers_the_compressed_request(gateway, acme):
    """Counted with the summary, the dropped transcript alone would be "too large" for this limit, a refusal no retry
    lifts; the compressed request fits it, and is counted once."""
    publish(acme, COMPRESS)
    conversation_tokens = count_chat_tokens(long_conversation(), model=acme.small.upstream_name)
    limit = conversation_tokens // 2
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, tokens_per_minute=limit)

    response = compressed(gateway, acme)

    assert response.status_code == 200, response.text
    main, summary = rows_of(response)
    assert summary is not None
    assert summary.prompt_tokens + SUMMARY_MAX_TOKENS > limit
    assert int(response.headers["x-ratelimit-remaining-tokens"]) == limit - (main.prompt_tokens_after_compression + 10)


def test_a_tenant_at_its_cap_of_requests_in_flight_pays_for_no_summary(gateway, acme, mock_upstream):
    publish(acme, COMPRESS)
    limit_inflight(acme, 1)
    # Alone, a request summarised holds one slot, taken before its summary and not again at admission.
    alone = compressed(gateway, acme)
    wait_until_none_held(acme.tenant)
    slots = sync_redis()
    slots.zadd(KEY_PREFIX + str(acme.tenant.pk), {"another-request": int(time.time() * 1000) + 60_000})
    served_before = mock_upstream.app.requests_served
    try:
        refused = compressed(gateway, acme)
    finally:
        slots.zrem(KEY_PREFIX + str(acme.tenant.pk), "another-request")

    assert alone.status_code == 200, alone.text
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "tenant_concurrency_limit_exceeded"
    assert mock_upstream.app.requests_served == served_before
    main, summary = rows_of(refused)
    assert (main.error_code, summary) == ("tenant_concurrency_limit_exceeded", None)
    wait_until_none_held(acme.tenant)


@pytest.fixture
def recording_upstream():
    yield from serving(RecordingUpstream())


@pytest.mark.parametrize(("limit", "sent"), [({"tokens_per_minute": 100_000}, 5), ({"requests_per_minute": 10}, None)])
def test_without_a_budget_a_token_rate_limit_sends_the_output_it_counts_as_max_tokens(
    gateway, recording_upstream, settings, limit, sent
):
    """No budget, no max_tokens, a model of no known maximum output: the token rate limit counts the reservation's
    cap of output tokens, so the upstream is sent that cap; a limit on requests alone adds nothing."""
    settings.LLMOPS_RESERVATION_MAX_TOKENS = 5
    setup = make_tenant_setup(recording_upstream.url, slug="tpmbound")
    rate_limit_create(tenant=setup.tenant, api_key=setup.api_key, **limit)

    response = chat(gateway, setup, {"model": setup.small.name, "messages": MESSAGES})

    assert response.status_code == 200, response.text
    assert [body.get("max_tokens") for body in recording_upstream.app.chat_bodies] == [sent]
    record = UsageRecord.objects.unscoped().get(tenant=setup.tenant)
    assert record.completion_tokens == (5 if sent else 24)
