from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.alerts.services import alert_channel_create
from billing.budgets.index import build_budget_index
from billing.budgets.reservations import budget_reserve
from billing.budgets.services import budget_create
from billing.models import Budget, UsageRecord
from tenants.models import Role
from tenants.services import membership_set
from tests.budgets.conftest import make_org
from tests.factories import UserFactory
from tests.loops import run


@pytest.fixture
def globex(db):
    return make_org("globex")


def member(org, role):
    user = UserFactory()
    membership_set(tenant=org.tenant, user=user, role=role)
    return user


def test_owner_creates_lists_changes_and_deletes_a_budget(client, org):
    client.force_login(member(org, Role.OWNER))
    channel = alert_channel_create(tenant=org.tenant, name="mail", kind="email", target="a@example.com")
    created = client.post(
        "/api/budgets/",
        {"scope": "team", "team": "acme-support", "period": "day", "limit_usd": "12.5", "channels": [channel.pk]},
        content_type="application/json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["tenant"], body["team"], body["limit_usd"], body["thresholds"]) == (
        "acme",
        "acme-support",
        "12.5000000000",
        [50, 80, 100],
    )
    assert body["channels"] == [channel.pk]
    assert body["current_period"]["spent_usd"] == "0.0000000000"

    assert [budget["id"] for budget in client.get("/api/budgets/").json()] == [body["id"]]
    changed = client.patch(
        f"/api/budgets/{body['id']}/", {"limit_usd": "20", "action": "notify"}, content_type="application/json"
    )
    assert changed.status_code == 200
    assert (changed.json()["limit_usd"], changed.json()["action"]) == ("20.0000000000", "notify")
    assert client.delete(f"/api/budgets/{body['id']}/").status_code == 204
    assert not Budget.objects.unscoped().exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"limit_usd": "-1"}, "limit_usd"),
        ({"limit_usd": "0"}, "limit_usd"),
        ({"limit_usd": "5", "thresholds": [80, 50]}, "thresholds"),
        ({"limit_usd": "5", "thresholds": [50, 101]}, "thresholds"),
        ({"limit_usd": "5", "scope": "team"}, "team"),
        ({"limit_usd": "5", "scope": "team", "team": "globex-support"}, "team"),
    ],
)
def test_bad_budgets_are_refused(client, org, globex, payload, field):
    client.force_login(member(org, Role.ADMIN))
    response = client.post("/api/budgets/", payload, content_type="application/json")
    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert not Budget.objects.unscoped().exists()


def test_another_tenants_budget_answers_404(client, org, globex):
    theirs = budget_create(tenant=globex.tenant, limit_usd=Decimal(5))
    client.force_login(member(org, Role.OWNER))
    assert client.get("/api/budgets/").json() == []
    assert client.get(f"/api/budgets/{theirs.pk}/").status_code == 404
    assert (
        client.patch(f"/api/budgets/{theirs.pk}/", {"limit_usd": "1"}, content_type="application/json").status_code
        == 404
    )
    assert client.delete(f"/api/budgets/{theirs.pk}/").status_code == 404
    assert (
        client.post("/api/budgets/?tenant=globex", {"limit_usd": "1"}, content_type="application/json").status_code
        == 404
    )
    assert client.get("/api/budgets/999999/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.limit_usd == 5


def test_a_channel_of_another_tenant_cannot_be_attached(client, org, globex):
    their_channel = alert_channel_create(tenant=globex.tenant, name="x", kind="email", target="x@example.com")
    client.force_login(member(org, Role.OWNER))
    response = client.post(
        "/api/budgets/", {"limit_usd": "1", "channels": [their_channel.pk]}, content_type="application/json"
    )
    assert response.status_code == 400


@pytest.mark.parametrize("role", [Role.VIEWER, Role.FINANCE])
def test_members_who_are_not_owners_or_admins_see_no_budgets(client, org, role):
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(5))
    client.force_login(member(org, role))
    assert client.get("/api/budgets/").json() == []
    assert client.get(f"/api/budgets/{budget.pk}/").status_code == 404
    assert client.post("/api/budgets/", {"limit_usd": "1"}, content_type="application/json").status_code == 400


def test_anonymous_is_refused(client, org):
    assert client.get("/api/budgets/").status_code == 403


@pytest.mark.parametrize("tenant", ["%00", "acme\x00", "../globex", "globex"])
def test_a_tenant_param_that_is_not_one_of_yours_answers_404(client, org, globex, tenant):
    client.force_login(member(org, Role.OWNER))

    assert client.get("/api/budgets/", {"tenant": tenant}).status_code == 404


def test_the_current_period_shows_spent_reserved_and_remaining(client, admin_client, org, redis_counters):
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(10))
    UsageRecord.objects.create(
        request_id="spent",
        tenant=org.tenant,
        team=org.team,
        api_key=org.api_key,
        cost_usd=Decimal("1.5"),
        http_status=200,
        created_at=timezone.now() - timedelta(seconds=5),
    )
    budgets = build_budget_index(tenant_id=org.tenant.pk).applicable(org.tenant.pk, org.team.pk, org.api_key.pk, "m")
    run(budget_reserve(budgets=budgets, amount=Decimal(2), request_id="in-flight", now=timezone.now()))
    client.force_login(member(org, Role.OWNER))

    current = client.get(f"/api/budgets/{budget.pk}/").json()["current_period"]
    listed = admin_client.get("/admin/billing/budget/").content.decode()

    assert (current["spent_usd"], current["reserved_usd"], current["remaining_usd"]) == (
        "1.5000000000",
        "2.0000000000",
        "6.5000000000",
    )
    assert "spent $1.50, reserved $2.00, remaining $6.50" in listed
