"""Budgets and rate limits hold through the live gateway, under concurrency and with streams in the mix."""

import asyncio
import math
import time
from collections import Counter
from decimal import Decimal

import httpx
import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.budgets.reservations import BudgetUnavailable
from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_counter_check, budget_create, budget_update
from billing.ledger.costs import usage_cost
from billing.models import RateLimit, UsageRecord
from billing.ratelimits import rate_limit_create
from llmops.gateway.chat import admission
from llmops.gateway.chat.worst_case import PROMPT_MARGIN
from routing.catalog import ModelPrices
from routing.policy.drafts import policy_draft_replace
from routing.services import routing_policy_create, routing_policy_publish
from routing.tokens import count_chat_tokens
from tests.conftest import LARGE_PRICES, SMALL_PRICES
from tests.factories import ModelFactory, ProviderFactory

MESSAGES = [{"role": "user", "content": "Classify this support ticket: my refund has not arrived."}]
MAX_TOKENS = 10


def worst_case(prices, *, prompt_margin: float = 1) -> Decimal:
    """``prompt_margin``: PROMPT_MARGIN where the model is reserved at another model's count of the prompt."""
    prompt = math.ceil(count_chat_tokens(MESSAGES, model="mock-small") * prompt_margin)
    return usage_cost(prices=ModelPrices(*prices), prompt_tokens=prompt, cached_tokens=0, completion_tokens=MAX_TOKENS)


async def fire(gateway, key, model, count, *, streaming_every=4):
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, limits=limits, timeout=60) as client:

        async def one(index):
            body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
            if index % streaming_every == 0:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    text = (await response.aread()).decode()
                    return response.status_code, response.headers.get("x-llmops-request-id"), text
            response = await client.post("/v1/chat/completions", json=body)
            return response.status_code, response.headers.get("x-llmops-request-id"), response.text

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_200_concurrent_requests_never_overspend_a_budget_that_covers_50(gateway, acme):
    limit = worst_case(SMALL_PRICES) * 50
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=limit)

    results = asyncio.run(fire(gateway, acme.key, acme.small.name, 200))

    answered = [(request_id, text) for status, request_id, text in results if status == 200]
    refused = [text for status, _, text in results if status == 429]
    assert len(answered) + len(refused) == 200, Counter(status for status, _, _ in results)
    assert all('"budget_exceeded"' in text for text in refused)
    assert 40 <= len(answered) <= 50
    assert all(text.rstrip().endswith("data: [DONE]") for _, text in answered if text.startswith("data:"))
    recorded = UsageRecord.objects.unscoped().filter(tenant=acme.tenant, http_status=200)
    assert set(recorded.values_list("request_id", flat=True)) == {request_id for request_id, _ in answered}
    assert recorded.filter(is_stream=True).exists()
    assert recorded.aggregate(spent=Sum("cost_usd"))["spent"] <= limit


def test_block_answers_429_and_a_request_over_the_whole_limit_is_told_not_to_retry(gateway, acme):
    """Its worst case is more than the budget allows in any period: a Retry-After would only bring it back."""
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=Decimal("0.000001"))

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {acme.key}"},
        json={"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
    )

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert response.headers["x-should-retry"] == "false" and "retry-after" not in response.headers
    assert UsageRecord.objects.unscoped().get().error_code == "budget_exceeded"


def test_downgrade_routes_to_the_cheaper_model_while_it_fits(gateway, acme):
    # Each downgrade is reserved at the margin (the prompt was counted for the large model, whose tokenizer the small
    # one need not share) and settled at what it cost: two settled, and room for a third's reservation.
    limit = worst_case(SMALL_PRICES) * 2 + worst_case(SMALL_PRICES, prompt_margin=PROMPT_MARGIN)
    assert worst_case(LARGE_PRICES) > limit
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=limit, action="downgrade")
    body = {"model": acme.large.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    headers = {"authorization": f"Bearer {acme.key}"}

    served = [httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers) for _ in range(4)]

    assert [r.status_code for r in served] == [200, 200, 200, 429]
    assert {r.headers["x-llmops-model"] for r in served[:3]} == {acme.small.name}
    assert "budget-downgrade" in served[0].headers["x-llmops-route"]


def test_a_downgrade_whose_cheaper_counter_is_unavailable_is_a_503_not_a_500(gateway, acme, monkeypatch):
    """The cheaper model's reservation can fail as the first one can (its counter being rebuilt, Postgres down while
    it is seeded): the request is refused for now, as budget_unavailable, and nothing is reserved."""
    limit = worst_case(SMALL_PRICES) * 3
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=limit, action="downgrade")
    reserve = admission.budget_reserve
    calls = []

    async def cheaper_unavailable(**kwargs):
        calls.append(kwargs["amount"])
        if len(calls) == 2:
            raise BudgetUnavailable("A budget counter is being rebuilt from the ledger; try again shortly.")
        return await reserve(**kwargs)

    monkeypatch.setattr(admission, "budget_reserve", cheaper_unavailable)
    body = {"model": acme.large.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {acme.key}"}
    )

    assert len(calls) == 2
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "budget_unavailable"


def test_notify_never_blocks_and_the_remaining_header_is_the_tightest(gateway, acme):
    budget_create(tenant=acme.tenant, scope="tenant", period="month", limit_usd=Decimal("0.000001"), action="notify")
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("5"))

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {acme.key}"},
        json={"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
    )

    assert response.status_code == 200
    remaining = Decimal(response.headers["x-llmops-budget-remaining-usd"])
    assert remaining == Decimal(0)


def test_a_request_without_max_tokens_under_a_budget_is_capped_for_its_worst_case(gateway, acme, settings):
    settings.LLMOPS_RESERVATION_MAX_TOKENS = 5
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("1"))

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {acme.key}"},
        json={"model": acme.small.name, "messages": MESSAGES},
    )

    assert response.json()["usage"]["completion_tokens"] == 5
    assert Decimal(response.headers["x-llmops-budget-remaining-usd"]) == Decimal(1) - Decimal(
        response.headers["x-llmops-cost-usd"]
    )


def test_rate_limits_answer_429_with_openai_headers(gateway, acme):
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, requests_per_minute=2, tokens_per_minute=100_000)
    headers = {"authorization": f"Bearer {acme.key}"}
    body = {"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}

    responses = [httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].headers["x-ratelimit-limit-requests"] == "2"
    assert responses[1].headers["x-ratelimit-remaining-requests"] == "0"
    assert responses[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(responses[2].headers["retry-after"]) >= 1


def test_a_request_the_rate_limit_refuses_leaves_nothing_reserved_against_the_budget(gateway, acme):
    """The rate limit and the reservation go to Redis together; a refused request's reservation is released."""
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, requests_per_minute=1)
    budget = budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("1"))
    headers = {"authorization": f"Bearer {acme.key}"}
    body = {"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    answered = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
    assert answered.status_code == 200
    budget_update(budget=budget, limit_usd=Decimal(answered.headers["x-llmops-cost-usd"]) + worst_case(SMALL_PRICES))

    refused = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
    RateLimit.objects.unscoped().filter(tenant=acme.tenant).delete()
    again = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)

    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    # Room for exactly one more worst case: there only if the refused request's reservation was given back.
    assert again.status_code == 200, again.text


@pytest.mark.parametrize("target", ["key", "team", "tenant"])
def test_kill_switch_reaches_the_gateway_within_a_second(gateway, acme, target):
    headers = {"authorization": f"Bearer {acme.key}"}
    body = {"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    victim = {"key": acme.api_key, "team": acme.team, "tenant": acme.tenant}[target]
    if target == "key":
        victim.revoked_at = victim.created_at
    else:
        victim.is_active = False
    victim.save()

    deadline = time.monotonic() + 1.0
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers).status_code
    assert status == 401


def _chain(setup, mock_upstream, *, target: str, fallback: str):
    """The tenant's `auto` goes to `target` first and `fallback` second ("failing": a model whose upstream answers
    503 every time)."""
    provider = ProviderFactory(name="flaky", base_url=f"{mock_upstream.url}/v1", timeout_seconds=Decimal("2"))
    failing = ModelFactory(name="acme-flaky", provider=provider, upstream_name="mock-fail-503")
    setup.tenant.model_access.allowed_models.add(failing)
    names = {"failing": failing.name, "small": setup.small.name, "large": setup.large.name}
    policy = routing_policy_create(tenant=setup.tenant)
    rule = {
        "priority": 1,
        "name": "chain",
        "match": {"requested_models": ["auto"]},
        "outcome": {"target_model": names[target], "fallback_models": [names[fallback]]},
    }
    aliases = {"auto": {"small": setup.small.name, "large": setup.large.name}}
    document = {"aliases": aliases, "rules": [rule], "injection_guard_action": "flag", "auto_threshold": 50}
    policy_draft_replace(policy=policy, document=document)
    routing_policy_publish(policy=policy, actor=None)
    return failing


def _auto(gateway, setup):
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {setup.key}"},
        json={"model": "auto", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        timeout=30,
    )


def test_a_fallback_that_serves_is_charged_to_its_own_model_budget_not_the_primarys(gateway, acme, mock_upstream):
    """The ledger counts a request under the model that served it, and so do the counters: the first model's budget
    is released, the fallback's is charged, and both agree with the ledger a rebuild would read."""
    failing = _chain(acme, mock_upstream, target="failing", fallback="small")
    primary = budget_create(tenant=acme.tenant, scope="tenant_model", model_name=failing.name, period="day",
                            limit_usd=Decimal("5"))  # fmt: skip
    fallback = budget_create(tenant=acme.tenant, scope="tenant_model", model_name=acme.small.name, period="day",
                             limit_usd=Decimal("5"))  # fmt: skip

    response = _auto(gateway, acme)

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == acme.small.name
    cost = UsageRecord.objects.unscoped().get().cost_usd
    assert cost > 0
    now = timezone.now()
    charged = budget_counter_check(budget=fallback, now=now)
    released = budget_counter_check(budget=primary, now=now)
    assert (charged.counted_usd, charged.ledger_usd) == (cost, cost)
    assert (released.counted_usd, released.ledger_usd) == (0, 0)
    assert budget_status(budget=primary, now=now).reserved_usd == 0


def test_a_fallback_whose_model_budget_is_spent_is_not_tried(gateway, acme, mock_upstream):
    """The fallback's own budget cannot hold the request: the chain stops before it, so the failing first model's
    error is the answer and nothing is spent on a model whose budget is used up."""
    _chain(acme, mock_upstream, target="failing", fallback="small")
    budget_create(tenant=acme.tenant, scope="tenant_model", model_name=acme.small.name, period="day",
                  limit_usd=Decimal("0.000001"))  # fmt: skip

    response = _auto(gateway, acme)

    assert response.status_code >= 500, response.text
    record = UsageRecord.objects.unscoped().get()
    assert record.served_model != acme.small.name and record.cost_usd == 0


def test_a_spent_fallback_budget_does_not_refuse_what_the_first_model_serves(gateway, acme, mock_upstream):
    _chain(acme, mock_upstream, target="large", fallback="small")
    budget_create(tenant=acme.tenant, scope="tenant_model", model_name=acme.small.name, period="day",
                  limit_usd=Decimal("0.000001"))  # fmt: skip

    response = _auto(gateway, acme)

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == acme.large.name
    assert f"budget-skipped={acme.small.name}" in response.headers["x-llmops-route"]


def test_tool_definitions_are_reserved_as_the_prompt_the_provider_bills(gateway, acme):
    """A short message with long tool definitions: the provider bills the definitions as prompt, so the worst case
    holds them, and a budget that covers the message alone twice over does not cover them."""
    limit = worst_case(SMALL_PRICES) * 2
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=limit)
    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": "Order details. " * 400, "parameters": {}},
    }
    body = {"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    headers = {"authorization": f"Bearer {acme.key}"}

    with_tools = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "tools": [tool]}, headers=headers)
    without = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)

    assert with_tools.status_code == 429, with_tools.text
    assert with_tools.json()["error"]["code"] == "budget_exceeded"
    assert without.status_code == 200, without.text
