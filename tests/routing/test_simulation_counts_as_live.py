"""The test console counts the prompt as live routing does, so a rule on prompt_tokens near the prompt's size picks
the same rule in the console as on the gateway: in the same encoding (for `auto`, the tenant's default model's) and
over the same fields (definitions, a response format, refusals and function calls)."""

import json

import httpx
import pytest
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing.policy.drafts import policy_draft_replace
from routing.services import routing_policy_create, routing_policy_publish, tenant_model_access_set
from routing.tokens import count_chat_tokens
from tests.factories import ModelFactory, UserFactory

# Far fewer tokens in o200k_base than in cl100k_base.
HINDI = [{"role": "user", "content": "नमस्ते, मेरा ऑर्डर अभी तक नहीं आया है। कृपया इसकी स्थिति बताइए।"}]
LONG_TEXT = "The parcel was handed to the courier on Monday and has not moved since. " * 12


def publish(setup, *, bound: dict, bounded_target: str, other_target: str, requested: str) -> None:
    """Rule `bounded` (the prompt_tokens `bound`) sends `requested` to `bounded_target`; rule `rest` to the other."""
    policy = routing_policy_create(tenant=setup.tenant)
    rules = [
        {
            "priority": 1,
            "name": "bounded",
            "match": {"requested_models": [requested], **bound},
            "outcome": {"target_model": bounded_target},
        },
        {
            "priority": 2,
            "name": "rest",
            "match": {"requested_models": [requested]},
            "outcome": {"target_model": other_target},
        },
    ]
    aliases = {"auto": {"small": setup.small.name, "large": setup.large.name}}
    document = {"aliases": aliases, "rules": rules, "injection_guard_action": "flag", "auto_threshold": 50}
    policy_draft_replace(policy=policy, document=document)
    routing_policy_publish(policy=policy, actor=None)


def live(gateway, setup, body: dict) -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {setup.key}"},
        json={**body, "max_tokens": 10},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def simulated(setup, body: dict) -> dict:
    client = APIClient()
    client.force_login(UserFactory(is_superuser=True, is_staff=True))
    response = client.post("/api/routing/simulate", {"tenant": setup.tenant.slug, "request": body}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_auto_is_counted_in_the_default_models_encoding_as_live(gateway, acme):
    mini = ModelFactory(name="acme-mini", provider=acme.small.provider, upstream_name="gpt-4o-mini")
    tenant_model_access_set(tenant=acme.tenant, allowed_models=[acme.small, acme.large, mini], default_model=mini)
    o200k, cl100k = count_chat_tokens(HINDI, model="gpt-4o-mini"), count_chat_tokens(HINDI, model="auto")
    assert o200k < cl100k
    publish(
        acme,
        bound={"prompt_tokens_max": o200k},
        bounded_target=mini.name,
        other_target=acme.large.name,
        requested="auto",
    )
    body = {"model": "auto", "messages": HINDI}

    response = live(gateway, acme, body)
    simulation = simulated(acme, body)

    assert "rule=bounded" in response.headers["x-llmops-route"]
    assert simulation["live"]["rule"] == simulation["draft"]["rule"] == "bounded"
    # Served by a model of the same encoding, the ledger keeps the count routing made: the console shows it.
    record = UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])
    assert simulation["request"]["prompt_tokens"] == record.prompt_tokens_before_compression == o200k


REFUSED = "I cannot share another customer's order. " * 12
COUNTED_FIELDS = {
    "response_format": {
        "messages": [{"role": "user", "content": "Where is my parcel?"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "status", "description": LONG_TEXT, "schema": {"type": "object"}},
        },
    },
    "refusal": {
        "messages": [
            {"role": "user", "content": "Where is the parcel of order 1002?"},
            {"role": "assistant", "content": "", "refusal": REFUSED},
            {"role": "user", "content": "Where is my parcel?"},
        ],
    },
    "refusal part": {
        "messages": [
            {"role": "user", "content": "Where is the parcel of order 1002?"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": REFUSED}]},
            {"role": "user", "content": "Where is my parcel?"},
        ],
    },
    "function_call": {
        "messages": [
            {"role": "user", "content": "Where is my parcel?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "lookup", "arguments": json.dumps({"note": LONG_TEXT})},
            },
            {"role": "function", "name": "lookup", "content": "in transit"},
            {"role": "user", "content": "And when will it arrive?"},
        ],
    },
}


@pytest.mark.parametrize("field", COUNTED_FIELDS)
def test_every_field_live_counting_reads_is_counted_in_the_console(gateway, acme, field):
    """The field alone takes the prompt over the bound: live routing counts it, and so does the console."""
    body = {"model": acme.small.name, **COUNTED_FIELDS[field]}
    assert count_chat_tokens([{"role": "user", "content": LONG_TEXT}], model="mock-small") > 100
    publish(
        acme,
        bound={"prompt_tokens_min": 100},
        bounded_target=acme.large.name,
        other_target=acme.small.name,
        requested=acme.small.name,
    )

    response = live(gateway, acme, body)
    simulation = simulated(acme, body)

    assert "rule=bounded" in response.headers["x-llmops-route"]
    assert simulation["live"]["rule"] == "bounded", simulation["request"]
    assert simulation["request"]["prompt_tokens"] >= 100
