"""Evaluation settings in the admin: a tenant's owners and admins set them for their tenant only, and the judge
model must be a chat model that tenant may use."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from billing.evaluation.services import JUDGE_MODEL_REFUSED, evaluation_settings_set
from billing.models import EvaluationSettings
from routing.models import ModelKind
from tenants.models import AuditEvent, Role
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user, make_world
from tests.factories import ModelFactory


@pytest.fixture
def world(db) -> World:
    return make_world()


def form(tenant, **changes) -> dict:
    data = {
        "tenant": tenant.pk,
        "enabled": "on",
        "monthly_budget_usd": "20",
        "routing_sample_rate": "0.02",
        "semantic_cache_sample_rate": "0.02",
        "compression_sample_rate": "0.02",
        "budget_downgrade_sample_rate": "0.02",
        "judge_model": "",
        "exact_task_types": "classification,extraction",
        "similarity_threshold": "0.85",
    }
    return {**data, **changes}


def test_an_owner_turns_evaluation_on_for_their_tenant_and_it_is_audited(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    response = client.post(
        admin_url("billing_evaluationsettings", "add"),
        form(world.acme.tenant, judge_model=world.acme.catalog_model.pk, routing_sample_rate="0.5"),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    settings = EvaluationSettings.objects.for_tenant(world.acme.tenant).get()
    assert (settings.enabled, settings.monthly_budget_usd, settings.routing_sample_rate) == (
        True,
        Decimal(20),
        Decimal("0.5"),
    )
    assert settings.judge_model == world.acme.catalog_model
    assert AuditEvent.objects.for_tenant(world.acme.tenant).filter(object_type="billing.evaluationsettings").exists()


@pytest.mark.parametrize("judge", ["granted_to_another_tenant", "embedding"])
def test_a_judge_the_tenant_may_not_use_for_chat_is_refused(client, world: World, judge):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))
    other = ModelFactory(name=judge)
    if judge == "embedding":
        other.kind = ModelKind.EMBEDDING
        other.save()
        world.acme.model_access.allowed_models.add(other)
    else:
        world.globex.model_access.allowed_models.add(other)

    add = admin_url("billing_evaluationsettings", "add")
    response = client.post(add, form(world.acme.tenant, judge_model=other.pk))

    assert response.status_code == 200
    # An embedding model is not even offered; a chat model of another tenant is refused for this one.
    assert "judge_model" in response.context["adminform"].form.errors
    assert not EvaluationSettings.objects.for_tenant(world.acme.tenant).exists()
    with pytest.raises(ValidationError, match=JUDGE_MODEL_REFUSED):
        evaluation_settings_set(
            tenant=world.acme.tenant, enabled=True, monthly_budget_usd=Decimal(1), judge_model=other
        )


def test_a_changed_judge_is_checked_against_the_settings_tenant(client, world: World):
    settings = EvaluationSettings.objects.create(tenant=world.acme.tenant, enabled=True)
    client.force_login(make_user(Role.ADMIN, tenant=world.acme.tenant))
    not_granted = ModelFactory(name="not-granted")

    refused = client.post(
        admin_url("billing_evaluationsettings", "change", settings.pk),
        form(world.acme.tenant, judge_model=not_granted.pk),
    )
    accepted = client.post(
        admin_url("billing_evaluationsettings", "change", settings.pk),
        form(world.acme.tenant, judge_model=world.acme.catalog_model.pk, similarity_threshold="0.9"),
    )

    assert refused.status_code == 200 and "judge_model" in refused.context["adminform"].form.errors
    assert accepted.status_code == 302
    settings.refresh_from_db()
    assert (settings.judge_model, settings.similarity_threshold) == (world.acme.catalog_model, Decimal("0.9"))


def test_a_rate_above_one_is_refused(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    response = client.post(
        admin_url("billing_evaluationsettings", "add"), form(world.acme.tenant, routing_sample_rate="1.5")
    )

    assert response.status_code == 200
    assert not EvaluationSettings.objects.for_tenant(world.acme.tenant).exists()


def test_an_owner_of_one_tenant_cannot_set_another_s(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))
    theirs = EvaluationSettings.objects.create(tenant=world.globex.tenant)

    added = client.post(admin_url("billing_evaluationsettings", "add"), form(world.globex.tenant))
    changed = client.post(admin_url("billing_evaluationsettings", "change", theirs.pk), form(world.globex.tenant))

    assert added.status_code == 200  # the tenant is not among the form's choices
    assert "Select a valid choice" in added.content.decode()
    # Another tenant's row answers as a missing one does: Django's admin redirects to the index.
    assert changed.status_code == 302 and changed.url == reverse("admin:index")
    theirs.refresh_from_db()
    assert not theirs.enabled


def test_saving_the_settings_lets_sampling_paused_for_a_spent_month_start_again(client, world: World):
    """The worker pauses sampling once the month's budget is spent; an admin raising the budget resumes it."""
    paused_until = datetime(2027, 1, 1, tzinfo=UTC)
    settings = EvaluationSettings.objects.create(tenant=world.acme.tenant, enabled=True, exhausted_until=paused_until)
    client.force_login(make_user(Role.ADMIN, tenant=world.acme.tenant))

    page = client.get(admin_url("billing_evaluationsettings", "change", settings.pk))
    raised = client.post(
        admin_url("billing_evaluationsettings", "change", settings.pk), form(world.acme.tenant, monthly_budget_usd="40")
    )

    assert "exhausted_until" in page.context["adminform"].readonly_fields
    assert raised.status_code == 302
    settings.refresh_from_db()
    assert (settings.monthly_budget_usd, settings.exhausted_until) == (Decimal(40), None)
    EvaluationSettings.objects.for_tenant(world.acme.tenant).update(exhausted_until=paused_until)
    evaluation_settings_set(tenant=world.acme.tenant, enabled=True, monthly_budget_usd=Decimal(50))
    assert EvaluationSettings.objects.for_tenant(world.acme.tenant).get().exhausted_until is None
