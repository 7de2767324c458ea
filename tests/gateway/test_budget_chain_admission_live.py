"""Budget admission through the live gateway, where the chain holds models that differ: a downgrade goes only to a
model that can take the request, and a dear fallback does not refuse what the first model can serve."""

import re
from decimal import Decimal

import httpx
import pytest

from billing.budgets.services import budget_create
from billing.ledger.costs import usage_cost
from billing.models import UsageRecord
from routing.catalog import ModelPrices
from routing.policy.drafts import policy_draft_replace
from routing.services import routing_policy_create, routing_policy_publish
from routing.tokens import count_chat_tokens, count_definition_tokens
from tests.conftest import LARGE_PRICES, SMALL_PRICES

MESSAGES = [{"role": "user", "content": "Classify this support ticket: my refund has not arrived."}]
MAX_TOKENS = 10
TOOL = {"type": "function", "function": {"name": "lookup", "description": "Order details.", "parameters": {}}}
FITTING = re.compile(r"With max_tokens=(\d+) it would fit\.")


def worst_case(prices, *, max_tokens: int = MAX_TOKENS, body: dict | None = None) -> Decimal:
    prompt = count_chat_tokens(MESSAGES, model="mock-small") + count_definition_tokens(body or {}, model="mock-small")
    return usage_cost(prices=ModelPrices(*prices), prompt_tokens=prompt, cached_tokens=0, completion_tokens=max_tokens)


def post(gateway, setup, body: dict) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {setup.key}"},
        json={"messages": MESSAGES, "max_tokens": MAX_TOKENS, **body},
        timeout=30,
    )


@pytest.fixture
def small_first_large_fallback(acme):
    """`auto` goes to the small model first and the large one, about 16 times dearer, second."""
    policy = routing_policy_create(tenant=acme.tenant)
    rule = {
        "priority": 1,
        "name": "chain",
        "match": {"requested_models": ["auto"]},
        "outcome": {"target_model": acme.small.name, "fallback_models": [acme.large.name]},
    }
    aliases = {"auto": {"small": acme.small.name, "large": acme.large.name}}
    document = {"aliases": aliases, "rules": [rule], "injection_guard_action": "flag", "auto_threshold": 50}
    policy_draft_replace(policy=policy, document=document)
    routing_policy_publish(policy=policy, actor=None)


def test_a_downgrade_never_goes_to_a_default_model_that_cannot_take_the_tools(gateway, acme):
    """The tenant's default model is cheaper but takes no tools: a request with tools is refused as the budget
    refuses, not sent to a model whose provider would answer 400 after the reservation."""
    acme.small.supports_tools = False
    acme.small.save()
    limit = worst_case(SMALL_PRICES, body={"tools": [TOOL]}) * 3
    assert worst_case(LARGE_PRICES) > limit
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=limit, action="downgrade")

    with_tools = post(gateway, acme, {"model": acme.large.name, "tools": [TOOL]})
    without = post(gateway, acme, {"model": acme.large.name})

    assert with_tools.status_code == 429, with_tools.text
    assert with_tools.json()["error"]["code"] == "budget_exceeded"
    refused = UsageRecord.objects.unscoped().get(request_id=with_tools.headers["x-llmops-request-id"])
    assert refused.served_model != acme.small.name and refused.cost_usd == 0
    # The same request without tools is downgraded to the default model.
    assert without.status_code == 200, without.text
    assert without.headers["x-llmops-model"] == acme.small.name
    assert "budget-downgrade" in without.headers["x-llmops-route"]


def test_a_dear_fallback_is_left_out_rather_than_refusing_what_the_first_model_fits(
    gateway, acme, small_first_large_fallback
):
    """A tenant budget with room for the small model's worst case but not the large fallback's: the request is
    served by the small model, the fallback skipped, instead of 429 for the chain's worst case."""
    limit = worst_case(SMALL_PRICES) * 3
    assert worst_case(LARGE_PRICES) > limit
    budget_create(tenant=acme.tenant, scope="tenant", period="day", limit_usd=limit)

    response = post(gateway, acme, {"model": "auto"})

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == acme.small.name
    assert f"budget-skipped={acme.large.name}" in response.headers["x-llmops-route"]
    assert Decimal(response.headers["x-llmops-budget-remaining-usd"]) == limit - Decimal(
        response.headers["x-llmops-cost-usd"]
    )


def test_when_the_first_model_alone_does_not_fit_the_429_names_the_max_tokens_at_which_it_would(
    gateway, acme, small_first_large_fallback
):
    """The figure is the first model's: sent with it, the request is served (the dear fallback left out), and with
    one more token it is not."""
    limit = worst_case(SMALL_PRICES, max_tokens=5)
    assert worst_case(LARGE_PRICES, max_tokens=1) > limit
    budget_create(tenant=acme.tenant, scope="tenant", period="day", limit_usd=limit)

    refused = post(gateway, acme, {"model": "auto"})

    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    fitting = FITTING.search(refused.json()["error"]["message"])
    assert fitting is not None, refused.json()["error"]["message"]
    assert int(fitting.group(1)) == 5
    over = post(gateway, acme, {"model": "auto", "max_tokens": 6})
    served = post(gateway, acme, {"model": "auto", "max_tokens": 5})
    assert over.status_code == 429, over.text
    assert served.status_code == 200, served.text
    assert served.headers["x-llmops-model"] == acme.small.name
