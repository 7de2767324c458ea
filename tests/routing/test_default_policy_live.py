"""The default policy through the live gateway: an `auto` request no rule claims is routed by the alias's difficulty
score, explained in x-llmops-route; a long chat over the cap is compressed and answered, and refused only under a rule
that says reject, or when even compressed it is over the cap."""

import re

import httpx
import pytest

from billing.models import UsageKind, UsageRecord
from routing.models import Model, RoutingRule
from routing.services import routing_policy_create_default, routing_policy_publish, tenant_model_access_set
from tests.factories import ModelFactory

HARD_QUESTION = (
    "Prove that the integral of 1/x^2 from 1 to infinity converges, then fix this function:\n"
    "```python\ndef area(r):\n    return 3.14 * r * r\n```\n"
)


@pytest.fixture
def default_policy(acme):
    return routing_policy_create_default(tenant=acme.tenant, small_model=acme.small, large_model=acme.large)


def chat(gateway, setup, messages, *, model="auto", headers=None):
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, "max_tokens": 16, "messages": messages},
        headers={"authorization": f"Bearer {setup.key}", **(headers or {})},
        timeout=30,
    )


def record_of(response) -> UsageRecord:
    return UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])


def long_chat() -> list[dict]:
    """About 5,000 prompt tokens of help-desk history, over the default cap of 4,000, and a plain last question."""
    messages = [{"role": "system", "content": "You are the help desk of a bicycle shop. Be brief."}]
    for turn in range(30):
        messages += [
            {
                "role": "user",
                "content": f"Turn {turn}: my order {1000 + turn} has not arrived. " + "Still waiting. " * 20,
            },
            {
                "role": "assistant",
                "content": f"Sorry about order {1000 + turn}. " + "We are checking with the courier. " * 10,
            },
        ]
    return [*messages, {"role": "user", "content": "So when will the last one arrive?"}]


def test_a_long_prompt_with_code_and_maths_is_scored_and_sent_to_the_large_model(gateway, acme, default_policy):
    response = chat(gateway, acme, [{"role": "user", "content": HARD_QUESTION + "The disc has a radius. " * 400}])

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == acme.large.name
    explained = re.fullmatch(
        r"rule=otherwise-by-difficulty alias=auto;score=(\d+)>=50\(length\+\d+,code\+20,math\+15\)->large "
        r"model=acme-large policy=v1",
        response.headers["x-llmops-route"],
    )
    assert explained, response.headers["x-llmops-route"]
    record = record_of(response)
    assert (record.route, record.routed_to_large, record.served_model) == (
        "otherwise-by-difficulty+score",
        True,
        acme.large.name,
    )


def test_a_short_plain_prompt_is_scored_and_sent_to_the_small_model(gateway, acme, default_policy):
    response = chat(gateway, acme, [{"role": "user", "content": "What are your opening hours?"}])

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == acme.small.name
    assert response.headers["x-llmops-route"] == (
        "rule=otherwise-by-difficulty alias=auto;score=0<50(no-features)->small model=acme-small policy=v1"
    )
    assert (record_of(response).route, record_of(response).routed_to_large) == ("otherwise-by-difficulty+score", False)


def test_a_long_chat_over_the_default_cap_is_compressed_and_answered(gateway, acme, default_policy):
    response = chat(gateway, acme, long_chat())

    assert response.status_code == 200, response.text
    record = record_of(response)
    assert record.prompt_tokens_before_compression > 4000 >= record.prompt_tokens_after_compression
    assert record.prompt_tokens <= 4000  # what the upstream was sent, as it counted it
    # The dropped turns were summarised by the tenant's default model, on a ledger row of its own.
    summary = UsageRecord.objects.unscoped().get(kind=UsageKind.COMPRESSION_SUMMARY)
    assert (summary.parent_request_id, summary.served_model) == (record.request_id, acme.small.name)


def test_a_rule_that_says_reject_still_refuses_the_long_chat(gateway, acme, default_policy):
    """What an admin does in the draft (the rule's "over cap action" in the policy's rules), then publishes."""
    RoutingRule.objects.unscoped().filter(policy=default_policy, name="otherwise-by-difficulty").update(
        over_cap_action="reject"
    )
    routing_policy_publish(policy=default_policy, actor=None)

    response = chat(gateway, acme, long_chat())

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "messages", "token_cap_exceeded")
    assert "over the cap of 4000 tokens of routing rule 'otherwise-by-difficulty'" in error["message"]
    assert "compressing" not in error["message"]
    assert (record_of(response).error_code, record_of(response).policy_version) == ("token_cap_exceeded", 2)


def test_what_compression_cannot_get_under_the_cap_is_refused_not_sent(gateway, acme, default_policy, mock_upstream):
    """A system prompt alone over the cap: compression keeps system messages, so it cannot fit, and says so."""
    served_before = mock_upstream.app.requests_served
    messages = [{"role": "system", "content": "Follow the house rules. " * 1000}, {"role": "user", "content": "hi"}]

    response = chat(gateway, acme, messages)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "token_cap_exceeded")
    assert "after compressing the conversation), over the cap of 4000 tokens" in error["message"]
    assert record_of(response).error_code == "token_cap_exceeded"
    assert mock_upstream.app.requests_served == served_before


ENTERPRISE = {"x-llmops-user-tier": "enterprise"}


@pytest.mark.parametrize(
    ("how", "refused_when_named"),
    [("removed from the tenant", (403, "model_not_allowed")), ("switched off", (404, "model_not_found"))],
)
def test_a_target_the_tenant_lost_is_answered_by_the_rules_fallback(
    gateway, acme, default_policy, how, refused_when_named
):
    """The enterprise rule sends `auto` to the large model, falling back to the small one."""
    if how == "removed from the tenant":
        tenant_model_access_set(tenant=acme.tenant, allowed_models=[acme.small], default_model=acme.small)
    else:
        large = Model.objects.get(pk=acme.large.pk)
        large.is_active = False
        large.save()

    response = chat(gateway, acme, [{"role": "user", "content": "Draft a contract"}], headers=ENTERPRISE)

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == acme.small.name
    assert response.headers["x-llmops-route"] == (
        f"rule=enterprise-tier model={acme.small.name} unavailable={acme.large.name} policy=v1"
    )
    assert (record_of(response).route, record_of(response).served_model) == ("enterprise-tier", acme.small.name)
    # A client that names the model itself is still refused.
    named = chat(gateway, acme, [{"role": "user", "content": "hi"}], model=acme.large.name)
    assert (named.status_code, named.json()["error"]["code"]) == refused_when_named


def test_a_policy_pick_with_no_model_left_to_serve_it_is_refused_naming_the_rule(gateway, acme, default_policy):
    other = ModelFactory(name="acme-other", provider=acme.small.provider)
    tenant_model_access_set(tenant=acme.tenant, allowed_models=[other], default_model=other)

    response = chat(gateway, acme, [{"role": "user", "content": "Draft a contract"}], headers=ENTERPRISE)

    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_allowed", "model")
    assert "routing rule 'enterprise-tier' sends this request to `acme-large` then `acme-small`" in error["message"]
