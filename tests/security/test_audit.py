from decimal import Decimal

import pytest
from django.db import transaction
from django.urls import reverse

from billing.alerts.services import alert_channel_create
from billing.budgets.services import budget_create
from billing.ratelimits import rate_limit_create
from routing.services import provider_create, provider_credential_set, routing_policy_create
from tenants.audit import audit_actor
from tenants.models import AuditAction, AuditEvent, ImmutableAuditError, Role
from tenants.services import api_key_create, api_key_revoke, membership_set, payload_log_settings_set, team_create
from tests.factories import ModelFactory, TenantFactory, UserFactory


def events(**filters):
    return list(AuditEvent.objects.unscoped().filter(**filters).order_by("pk"))


@pytest.mark.django_db
def test_every_kind_of_configuration_change_is_audited_with_its_tenant():
    tenant = TenantFactory(slug="acme")
    team = team_create(tenant=tenant, slug="support")
    api_key, _ = api_key_create(team=team)
    api_key_revoke(api_key=api_key)
    routing_policy_create(tenant=tenant)
    budget_create(tenant=tenant, limit_usd=Decimal("10"))
    alert_channel_create(tenant=tenant, name="ops", kind="email", target="ops@example.com")
    rate_limit_create(tenant=tenant, team=team, requests_per_minute=60)
    payload_log_settings_set(tenant=tenant, enabled=True)
    ModelFactory(name="priced")
    audited = {(event.object_type, event.action) for event in events()}
    for expected in [
        ("tenants.tenant", "create"),
        ("tenants.team", "create"),
        ("tenants.apikey", "create"),
        ("tenants.apikey", "update"),
        ("routing.routingpolicy", "create"),
        ("billing.budget", "create"),
        ("billing.alertchannel", "create"),
        ("billing.ratelimit", "create"),
        ("tenants.payloadlogsettings", "create"),
        ("routing.provider", "create"),
        ("routing.model", "create"),
    ]:
        assert expected in audited
    assert {event.tenant_slug for event in events(object_type__startswith="billing.")} == {"acme"}
    assert {event.tenant_id for event in events(object_type="routing.model")} == {None}


@pytest.mark.django_db
def test_an_update_records_only_what_changed_and_masks_secrets():
    provider = provider_create(name="openai", base_url="https://api.openai.com/v1", credential="sk-first-secret-0000")
    provider_credential_set(provider=provider, credential="sk-second-secret-1111")
    created, updated = events(object_type="routing.provider")
    assert created.action == AuditAction.CREATE and created.after["name"] == "openai"
    assert updated.action == AuditAction.UPDATE
    assert set(updated.after) == {"credential_encrypted"}
    assert updated.before["credential_encrypted"].startswith("***")
    assert updated.before["credential_encrypted"] != updated.after["credential_encrypted"]
    assert "sk-" not in str(created.after) + str(updated.before) + str(updated.after)


@pytest.mark.django_db
def test_a_save_without_changes_writes_nothing_and_a_delete_keeps_the_before():
    tenant = TenantFactory()
    team = team_create(tenant=tenant, slug="t")
    count = AuditEvent.objects.unscoped().count()
    team.save()
    assert AuditEvent.objects.unscoped().count() == count
    team.delete()
    deleted = events(object_type="tenants.team", action=AuditAction.DELETE)[0]
    assert deleted.before["slug"] == "t" and deleted.after is None and deleted.tenant_id == tenant.pk


@pytest.mark.django_db
def test_the_actor_is_who_the_context_names_else_system():
    user = UserFactory(username="alice")
    with audit_actor(user=user):
        TenantFactory(slug="by-alice")
    with audit_actor(name="manage.py create_tenant"):
        TenantFactory(slug="by-command")
    TenantFactory(slug="by-nobody")
    actors = {event.object_repr: (event.actor_id, event.actor_name) for event in events(object_type="tenants.tenant")}
    assert actors == {
        "by-alice": (user.pk, "alice"),
        "by-command": (None, "manage.py create_tenant"),
        "by-nobody": (None, "system"),
    }


@pytest.mark.django_db
def test_the_audit_row_rolls_back_with_the_change():
    with pytest.raises(RuntimeError), transaction.atomic():
        TenantFactory(slug="rolled-back")
        raise RuntimeError
    assert not AuditEvent.objects.unscoped().filter(object_repr="rolled-back").exists()


@pytest.mark.django_db
def test_audit_events_cannot_be_changed_or_deleted():
    TenantFactory()
    event = AuditEvent.objects.unscoped().first()
    event.actor_name = "mallory"
    with pytest.raises(ImmutableAuditError):
        event.save()
    with pytest.raises(ImmutableAuditError):
        event.delete()
    with pytest.raises(ImmutableAuditError):
        AuditEvent.objects.unscoped().all().delete()
    with pytest.raises(ImmutableAuditError):
        AuditEvent.objects.unscoped().update(actor_name="mallory")


@pytest.mark.django_db
def test_admin_changes_are_attributed_and_each_tenant_reads_only_its_own(client):
    acme, globex = TenantFactory(slug="acme"), TenantFactory(slug="globex")
    team_create(tenant=globex, slug="globex-team")
    owner = UserFactory(username="acme-owner", is_staff=True)
    membership_set(tenant=acme, user=owner, role=Role.OWNER)
    client.force_login(owner)
    response = client.post(
        reverse("admin:tenants_team_add"), {"tenant": acme.pk, "slug": "made-in-admin", "name": "Made"}
    )
    assert response.status_code == 302
    event = AuditEvent.objects.unscoped().get(object_repr="acme/made-in-admin")
    assert (event.actor_id, event.actor_name) == (owner.pk, "acme-owner")

    page = client.get(reverse("admin:tenants_auditevent_changelist"))
    assert page.status_code == 200
    assert b"made-in-admin" in page.content and b"globex-team" not in page.content
    other = AuditEvent.objects.unscoped().get(object_repr="globex/globex-team")
    assert client.get(reverse("admin:tenants_auditevent_change", args=[other.pk])).status_code == 302
    assert client.get(reverse("admin:tenants_auditevent_change", args=[event.pk])).status_code == 200
    assert client.post(reverse("admin:tenants_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.unscoped().filter(pk=event.pk).exists()
