"""A client that leaves outside the upstream chain is charged what the provider billed: nothing before the chain
starts (no provider was sent the prompt), the whole answer once one came back (the provider bills it whole), however
long the gateway takes to settle it. Each window is held open by making one of the gateway's own awaits wait."""

import asyncio
from decimal import Decimal

import httpx
import pytest

from billing.budgets.services import budget_create
from billing.models import UsageKind, UsageRecord
from llmops.gateway import call as gateway_call
from llmops.gateway.chat import completion, pipeline
from routing.services import tenant_model_access_set
from routing.tokens import count_chat_tokens
from tests.conftest import LARGE_PRICES, SMALL_PRICES
from tests.factories import ModelFactory
from tests.gateway.test_failed_attempts_live import (
    LIMIT,
    MESSAGES,
    assert_counted,
    eventually,
    large_model,
    leave_before_the_answer,
    only_request_row,
    priced,
)
from tests.gateway.test_routing_live import publish
from tests.gateway.test_worst_case_live import COMPRESS, long_conversation

# What the mock answers `max_tokens: 20` with, and bills.
ANSWER_TOKENS = 20


async def held(*args, **kwargs) -> None:
    """One of the gateway's awaits, kept waiting until the request is cancelled."""
    await asyncio.Event().wait()


def held_once(function):
    """``function``, whose first call waits until the request is cancelled; the calls after it go through."""
    calls = 0

    async def first_held(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            await held()
        return await function(*args, **kwargs)

    return first_held


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
def test_a_client_that_leaves_between_admission_and_the_chain_is_charged_nothing(
    gateway, acme, mock_upstream, monkeypatch, stream
):
    """Admitted, its worst case reserved, and gone before the chain started: no provider was sent the prompt, so the
    499 row charges nothing and the reservation is given back whole."""
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    admit = completion.admit

    async def admitted_then_held(*args, **kwargs):
        await admit(*args, **kwargs)
        await held()

    monkeypatch.setattr(completion, "admit", admitted_then_held)
    served_before = mock_upstream.app.requests_served

    leave_before_the_answer(gateway, acme, acme.small.name, stream=stream)

    request = only_request_row()
    assert (request.http_status, request.error_code, request.served_model) == (
        499,
        "client_disconnected",
        acme.small.name,
    )
    assert (request.prompt_tokens, request.completion_tokens, request.cost_usd) == (0, 0, 0)
    assert mock_upstream.app.requests_served == served_before
    assert_counted(budget, Decimal(0))


def test_a_client_that_leaves_after_the_answer_came_back_is_charged_the_answer(gateway, acme, monkeypatch):
    """The answer came back and the client left before it was settled (the chain's tail, here its failed attempts'
    charge, kept waiting): the provider billed the whole answer, which the 499 row charges at its own usage."""
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    monkeypatch.setattr(pipeline, "failed_attempts_charge", held)

    leave_before_the_answer(gateway, acme, acme.small.name)

    request = only_request_row()
    assert (request.http_status, request.error_code, request.served_model) == (
        499,
        "client_disconnected",
        acme.small.name,
    )
    # The provider's usage, not the gateway's count of the prompt alone.
    assert (request.prompt_tokens, request.completion_tokens, request.usage_estimated) == (
        count_chat_tokens(MESSAGES, model="mock-small"),
        ANSWER_TOKENS,
        False,
    )
    assert request.cost_usd == priced(SMALL_PRICES, request) > 0
    assert_counted(budget, request.cost_usd)


def test_a_client_that_leaves_while_a_finished_stream_is_counted_is_charged_the_answer(
    gateway, acme, mock_upstream, monkeypatch
):
    """The stream reached [DONE] with no usage from the provider, and the client left while the gateway counted the
    answer: the row is still written, a 499 charging the whole answer the stream carried."""
    model = large_model(acme, "acme-no-usage", base_url=mock_upstream.url, upstream_name="mock-no-usage")
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    monkeypatch.setattr(pipeline, "estimated_usage", held_once(pipeline.estimated_usage))
    body = {"model": model.name, "messages": MESSAGES, "max_tokens": ANSWER_TOKENS, "stream": True}
    headers = {"authorization": f"Bearer {acme.key}"}
    received = []

    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=httpx.Timeout(10, read=1.5),
        ) as response,
    ):
        for line in response.iter_lines():
            received.append(line)

    # Every event of the answer came through, and the end did not.
    assert response.status_code == 200 and sum('"finish_reason":"stop"' in line for line in received) == 1
    assert "data: [DONE]" not in received
    request = only_request_row()
    assert (request.http_status, request.error_code, request.served_model) == (
        499,
        "client_disconnected",
        model.name,
    )
    assert request.usage_estimated and request.prompt_tokens > 0 and request.completion_tokens == ANSWER_TOKENS
    assert request.cost_usd == priced(LARGE_PRICES, request) > 0
    assert_counted(budget, request.cost_usd)


def test_a_summary_whose_answer_came_back_is_charged_it_when_the_client_leaves(gateway, acme, monkeypatch):
    """Compression's summary came back without usage, and the client left while the gateway counted it: the
    summary's 499 row charges its answer with its prompt, and the request, whose chain never started, nothing."""
    unmetered = ModelFactory(
        name="acme-summarizer",
        provider=acme.small.provider,
        upstream_name="mock-no-usage",
        input_price_per_million=SMALL_PRICES[0],
        cached_input_price_per_million=SMALL_PRICES[1],
        output_price_per_million=SMALL_PRICES[2],
    )
    tenant_model_access_set(
        tenant=acme.tenant, allowed_models=[acme.small, acme.large, unmetered], default_model=unmetered
    )
    publish(acme, COMPRESS)
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    # The count of an answer that came without usage (llmops.gateway.call.reply_usage).
    monkeypatch.setattr(gateway_call, "estimated_usage", held)
    body = {"model": acme.small.name, "messages": long_conversation(), "max_tokens": 10}

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {acme.key}"},
            timeout=httpx.Timeout(10, read=1.5),
        )

    request = only_request_row()
    summaries = UsageRecord.objects.unscoped().filter(kind=UsageKind.COMPRESSION_SUMMARY)
    [summary] = eventually(lambda: list(summaries))
    assert (summary.http_status, summary.error_code, summary.served_model) == (
        499,
        "client_disconnected",
        unmetered.name,
    )
    assert summary.usage_estimated and summary.prompt_tokens > 0 and summary.completion_tokens > 0
    assert summary.cost_usd == priced(SMALL_PRICES, summary) > 0
    assert (request.http_status, request.cost_usd) == (499, 0)
    assert_counted(budget, summary.cost_usd)
