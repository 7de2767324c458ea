"""The policy admin: the test console and publishing, scoped to the tenant's editors."""

import asyncio
import json

import pytest
from django.test import Client
from django.urls import reverse

from llmops.gateway.snapshot import ConfigCache
from routing.models import RoutingPolicy, RoutingPolicyAudit, RoutingPolicyVersion, RoutingRule
from routing.services import routing_policy_create_default
from tenants.models import Role
from tenants.services import membership_set
from tests.conftest import _close_other_connections
from tests.factories import UserFactory


@pytest.fixture
def acme_policy(acme_routing):
    return routing_policy_create_default(
        tenant=acme_routing.tenant, small_model=acme_routing.small, large_model=acme_routing.large
    )


def staff_client(tenant, role) -> Client:
    user = UserFactory(is_staff=True)
    membership_set(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


def test_the_console_shows_draft_and_live_decisions(acme_policy, acme_routing):
    client = staff_client(acme_routing.tenant, Role.ADMIN)
    url = reverse("admin:routing_routingpolicy_console", args=[acme_policy.pk])
    request_json = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "classify"}]})
    page = client.post(url, {"request_json": request_json, "headers_json": '{"x-llmops-task-type": "classification"}'})
    assert page.status_code == 200
    assert "rule=short-classification-and-summaries model=acme-small policy=v1" in page.content.decode()


def test_another_tenants_editor_gets_404_on_the_console(acme_policy, globex_routing):
    client = staff_client(globex_routing.tenant, Role.OWNER)
    assert client.get(reverse("admin:routing_routingpolicy_console", args=[acme_policy.pk])).status_code == 404


def test_the_publish_action_refuses_an_invalid_draft_with_the_rule_named(acme_policy, acme_routing):
    RoutingRule.objects.unscoped().filter(policy=acme_policy, name="enterprise-tier").update(message_regex="(")
    client = staff_client(acme_routing.tenant, Role.OWNER)
    response = client.post(
        reverse("admin:routing_routingpolicy_changelist"),
        {"action": "publish_drafts", "_selected_action": [acme_policy.pk]},
        follow=True,
    )
    assert "rule &#x27;enterprise-tier&#x27;: invalid regex" in response.content.decode()
    acme_policy.refresh_from_db()
    assert acme_policy.live_version.number == 1


def test_an_editor_deletes_a_policy_with_a_live_version_and_the_next_request_routes_without_it(
    acme_policy, acme_routing, transactional_db
):
    tenant_id = acme_routing.tenant.pk
    cache = ConfigCache()
    before = asyncio.run(cache.for_tenant(tenant_id))
    client = staff_client(acme_routing.tenant, Role.OWNER)
    url = reverse("admin:routing_routingpolicy_delete", args=[acme_policy.pk])

    page = client.get(url).content.decode()
    response = client.post(url, {"post": "yes"})
    after = asyncio.run(cache.for_tenant(tenant_id))
    _close_other_connections()

    # The live version and the audit log go with their policy: nothing on the page asks for more permissions.
    assert "Are you sure" in page and "acme v1" in page
    assert response.status_code == 302
    assert not RoutingPolicy.objects.for_tenant(tenant_id).exists()
    assert not RoutingPolicyVersion.objects.for_tenant(tenant_id).exists()
    assert not RoutingPolicyAudit.objects.for_tenant(tenant_id).exists()
    assert tenant_id in before.policies and after.policies == {}
