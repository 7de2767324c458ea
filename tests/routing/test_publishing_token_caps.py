"""A rule's token caps are at least 1 token: 0 (which the draft's columns allow) is refused at publishing, naming the
rule and the field, in the service, the admin's publish action and a what-if document alike."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from routing.models import RoutingAlias, RoutingPolicyAudit, RoutingRule
from routing.services import routing_policy_create, routing_policy_document_errors, routing_policy_publish
from tenants.models import Role
from tests.routing.test_admin import staff_client

TOKEN_CAPS = ("prompt_token_cap", "max_tokens_cap", "default_max_tokens")


@pytest.fixture
def draft(acme_routing):
    policy = routing_policy_create(tenant=acme_routing.tenant)
    RoutingAlias.objects.create(
        policy=policy, name="auto", small_model=acme_routing.small, large_model=acme_routing.large
    )
    RoutingRule.objects.create(policy=policy, priority=10, name="vip", target_model=acme_routing.large)
    return policy


def set_on_rule(policy, **outcome) -> None:
    RoutingRule.objects.unscoped().filter(policy=policy, name="vip").update(**outcome)


@pytest.mark.parametrize("field", TOKEN_CAPS)
def test_a_cap_of_zero_tokens_is_refused_naming_the_rule_and_the_field(draft, field):
    live = routing_policy_publish(policy=draft, actor=None)
    set_on_rule(draft, **{field: 0})

    with pytest.raises(ValidationError) as refused:
        routing_policy_publish(policy=draft, actor=None)

    assert f"rule 'vip': {field} must be at least 1 token or empty for none" in "; ".join(refused.value.messages)
    draft.refresh_from_db()
    assert (draft.live_version, draft.versions.count(), RoutingPolicyAudit.objects.unscoped().count()) == (live, 1, 1)


def test_caps_of_one_token_are_published(draft):
    set_on_rule(draft, **dict.fromkeys(TOKEN_CAPS, 1))

    version = routing_policy_publish(policy=draft, actor=None)

    assert {field: version.document["rules"][0]["outcome"][field] for field in TOKEN_CAPS} == dict.fromkeys(
        TOKEN_CAPS, 1
    )


def test_the_admin_publish_action_says_why_a_cap_of_zero_is_refused(draft, acme_routing):
    set_on_rule(draft, max_tokens_cap=0)
    client = staff_client(acme_routing.tenant, Role.OWNER)

    response = client.post(
        reverse("admin:routing_routingpolicy_changelist"),
        {"action": "publish_drafts", "_selected_action": [draft.pk]},
        follow=True,
    )

    assert "rule &#x27;vip&#x27;: max_tokens_cap must be at least 1 token" in response.content.decode()
    draft.refresh_from_db()
    assert draft.live_version is None


def test_a_what_if_document_with_a_cap_of_zero_is_refused(acme_routing):
    document = {
        "aliases": {},
        "rules": [{"priority": 10, "name": "tiny", "outcome": {"prompt_token_cap": 0}}],
    }

    errors = routing_policy_document_errors(tenant=acme_routing.tenant, document=document)

    assert errors == [
        "rule 'tiny': prompt_token_cap must be at least 1 token or empty for none (0 would refuse every prompt)"
    ]
