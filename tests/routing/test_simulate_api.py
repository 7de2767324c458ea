"""POST /api/routing/simulate: the draft and the live decision side by side, for the tenant's editors only."""

import pytest
from rest_framework.test import APIClient

from routing.models import RoutingRule
from routing.services import routing_policy_create_default
from tenants.models import Role
from tenants.services import membership_set
from tests.factories import UserFactory

URL = "/api/routing/simulate"
ENTERPRISE_REQUEST = {"model": "auto", "messages": [{"role": "user", "content": "Hello there"}]}


@pytest.fixture
def acme_policy(acme_routing):
    return routing_policy_create_default(
        tenant=acme_routing.tenant, small_model=acme_routing.small, large_model=acme_routing.large
    )


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_an_admin_sees_the_draft_and_live_decisions_with_the_reasons(acme_policy, acme_routing):
    user = UserFactory()
    membership_set(tenant=acme_routing.tenant, user=user, role=Role.ADMIN)
    RoutingRule.objects.unscoped().filter(policy=acme_policy, name="enterprise-tier").update(
        target_model=acme_routing.other
    )
    payload = {"tenant": "acme", "request": ENTERPRISE_REQUEST, "headers": {"X-LLMOps-User-Tier": "enterprise"}}
    response = client_for(user).post(URL, payload, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["live_version"] == 1
    assert body["request"]["user_tier"] == "enterprise"
    assert (body["live"]["target_model"], body["live"]["rule"]) == ("acme-large", "enterprise-tier")
    assert body["draft"]["target_model"] == "acme-other"
    assert body["live"]["explanation"] == "rule=enterprise-tier model=acme-large policy=v1"
    assert body["live"]["trace"][0].startswith("rule too-long-to-compress (priority 5) skipped")
    assert body["live"]["trace"][1].startswith("rule short-classification-and-summaries (priority 10) skipped")


def test_under_the_default_policy_an_auto_request_no_rule_claims_is_scored_and_the_threshold_explained(
    acme_policy, acme_routing
):
    user = UserFactory()
    membership_set(tenant=acme_routing.tenant, user=user, role=Role.ADMIN)
    question = "Prove that the integral converges, then fix this:\n```python\ndef area(r):\n    return r * r\n```\n"
    hard = {"model": "auto", "messages": [{"role": "user", "content": question + "Context: the disc. " * 500}]}
    plain = {"model": "auto", "messages": [{"role": "user", "content": "What are your opening hours?"}]}

    decisions = [
        client_for(user).post(URL, {"tenant": "acme", "request": request}, format="json").json()["live"]
        for request in (hard, plain)
    ]

    assert [(live["target_model"], live["routed_to_large"]) for live in decisions] == [
        ("acme-large", True),
        ("acme-small", False),
    ]
    assert decisions[0]["difficulty_score"] >= 50 > decisions[1]["difficulty_score"] == 0
    assert decisions[0]["rule"] == decisions[1]["rule"] == "otherwise-by-difficulty"
    assert f"score={decisions[0]['difficulty_score']}>=50(" in decisions[0]["explanation"]
    assert decisions[1]["explanation"] == (
        "rule=otherwise-by-difficulty alias=auto;score=0<50(no-features)->small model=acme-small policy=v1"
    )
    assert decisions[0]["trace"][-1].startswith("alias auto: score=")


@pytest.mark.parametrize("role", [None, Role.VIEWER, Role.FINANCE])
def test_users_who_cannot_edit_the_tenant_get_404(acme_policy, globex_routing, acme_routing, role):
    user = UserFactory()
    membership_set(tenant=globex_routing.tenant, user=user, role=Role.OWNER)
    if role:
        membership_set(tenant=acme_routing.tenant, user=user, role=role)
    response = client_for(user).post(URL, {"tenant": "acme", "request": ENTERPRISE_REQUEST}, format="json")
    assert response.status_code == 404


def test_a_superuser_may_simulate_any_tenant_and_bad_requests_are_400(acme_policy):
    client = client_for(UserFactory(is_superuser=True, is_staff=True))
    assert client.post(URL, {"tenant": "acme", "request": ENTERPRISE_REQUEST}, format="json").status_code == 200
    bad = client.post(URL, {"tenant": "acme", "request": {"model": "auto"}}, format="json")
    assert bad.status_code == 400 and "messages" in bad.content.decode()


def test_anonymous_users_are_refused(acme_policy):
    assert APIClient().post(URL, {"tenant": "acme", "request": ENTERPRISE_REQUEST}, format="json").status_code == 403
