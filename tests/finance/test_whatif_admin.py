"""The admin's what-if page: the draft of a policy replayed for its tenant's members, read-only, and nothing of a
tenant to anybody outside it."""

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from routing.models import RoutingPolicy, RoutingRule
from tenants.models import Role
from tenants.services import membership_set
from tests.factories import UsageRecordFactory, UserFactory
from tests.finance.test_whatif import make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme():
    tenant, key = make_tenant("acme")
    for days_ago in (1, 20):
        UsageRecordFactory(
            api_key=key,
            requested_model="auto",
            task_type="classification",
            has_tools=False,
            has_images=False,
            route="short-classification-and-summaries",
            prompt_tokens=100,
            prompt_tokens_before_compression=100,
            completion_tokens=10,
            created_at=timezone.now() - timedelta(days=days_ago),
        )
    return RoutingPolicy.objects.for_tenant(tenant).get()


def client_for(tenant, role: Role | None = None, *, superuser: bool = False) -> Client:
    user = UserFactory(is_staff=True, is_superuser=superuser)
    if role is not None:
        membership_set(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


def whatif_url(policy, days: str = "") -> str:
    return reverse("admin:billing_policy_whatif", args=[policy.pk]) + (f"?days={days}" if days else "")


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.FINANCE, Role.VIEWER])
def test_the_tenants_members_see_the_draft_replayed_by_rule(acme, role):
    page = client_for(acme.tenant, role).get(whatif_url(acme))

    assert page.status_code == 200
    html = page.content.decode()
    assert "1 requests from" in html and "0 replayed from their payload log, 1 from ledger features only" in html
    assert "short-classification-and-summaries" in html and "same model: no change" in html
    assert '<th class="num" id="whatif-difference">$0.00</th>' in html
    assert "<strong>7 days</strong>" in html and '<a href="?days=30">30 days</a>' in html


def test_the_window_is_7_or_30_days(acme):
    client = client_for(acme.tenant, Role.ADMIN)

    assert "2 requests from" in client.get(whatif_url(acme, "30")).content.decode()
    # Any other window is the default one.
    assert "1 requests from" in client.get(whatif_url(acme, "90")).content.decode()


def test_a_draft_moved_to_the_large_model_shows_its_cost(acme):
    rule = RoutingRule.objects.for_tenant(acme.tenant).get(name="short-classification-and-summaries")
    rule.target_model = rule.policy.aliases.get().large_model
    rule.save()

    html = client_for(acme.tenant, Role.ADMIN).get(whatif_url(acme)).content.decode()

    # 100 prompt and 10 completion tokens: $0.000021 on the small model, $0.00035 on the large one.
    assert '<th class="num" id="whatif-difference">+$0.00033</th>' in html


def test_another_tenants_members_and_outsiders_get_404(acme):
    globex_tenant, _ = make_tenant("globex")

    assert client_for(globex_tenant, Role.OWNER).get(whatif_url(acme)).status_code == 404
    assert client_for(acme.tenant).get(whatif_url(acme)).status_code == 404
    assert client_for(acme.tenant, superuser=True).get(whatif_url(acme)).status_code == 200


def test_the_page_is_read_only(acme):
    assert client_for(acme.tenant, Role.OWNER).post(whatif_url(acme)).status_code == 405


def test_a_draft_that_could_not_be_published_is_named_instead_of_replayed(acme):
    RoutingRule.objects.for_tenant(acme.tenant).filter(name="enterprise-tier").update(message_regex="(")

    html = client_for(acme.tenant, Role.ADMIN).get(whatif_url(acme)).content.decode()

    assert "The draft cannot be replayed: rule &#x27;enterprise-tier&#x27;: invalid regex" in html
    assert "whatif-rules" not in html


def test_the_policy_page_links_to_the_what_if(acme):
    page = client_for(acme.tenant, Role.ADMIN).get(reverse("admin:routing_routingpolicy_change", args=[acme.pk]))

    assert f'href="{whatif_url(acme)}">What if?</a>' in page.content.decode()
