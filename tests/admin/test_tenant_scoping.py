"""Who may do what in the admin: membership roles decide, and one tenant never sees another's rows."""

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin import site
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory
from django.urls import reverse

from billing.models import QualitySlo
from routing.models import TenantModelAccess
from tenants.models import ApiKey, Membership, Role, Team
from tenants.services import membership_set
from tests.admin.scenario import NO_MEMBERSHIP, SUPERUSER, TenantRows, World, admin_url, make_user
from tests.factories import UserFactory

EDITORS = frozenset({Role.OWNER, Role.ADMIN, SUPERUSER})
MEMBERS = EDITORS | {Role.FINANCE, Role.VIEWER}
SUPERUSER_ONLY = frozenset({SUPERUSER})
NOBODY = frozenset()
ROLES = [Role.OWNER, Role.ADMIN, Role.FINANCE, Role.VIEWER, NO_MEMBERSHIP, SUPERUSER]
MEMBER_ROLES = [Role.OWNER, Role.ADMIN, Role.FINANCE, Role.VIEWER]


@dataclass(frozen=True)
class AdminTarget:
    admin_name: str
    row: Callable[[TenantRows], Any]
    change_data: Callable[[TenantRows], dict]
    is_changed: Callable[[Any], bool]
    viewers: frozenset[str]
    adders: frozenset[str]
    changers: frozenset[str]
    tenant_owned: bool = True

    def __str__(self):
        return self.admin_name


TARGETS = [
    AdminTarget(
        admin_name="tenants_tenant",
        row=lambda rows: rows.tenant,
        change_data=lambda rows: {"name": "Renamed", "time_zone": "Europe/Paris", "is_active": "on"},
        is_changed=lambda tenant: tenant.name == "Renamed",
        viewers=MEMBERS,
        adders=SUPERUSER_ONLY,
        changers=EDITORS,
    ),
    AdminTarget(
        admin_name="tenants_team",
        row=lambda rows: rows.team,
        change_data=lambda rows: {"name": "Renamed", "is_active": "on"},
        is_changed=lambda team: team.name == "Renamed",
        viewers=MEMBERS,
        adders=EDITORS,
        changers=EDITORS,
    ),
    AdminTarget(
        admin_name="tenants_apikey",
        row=lambda rows: rows.api_key,
        change_data=lambda rows: {"name": "Renamed", "expires_at_0": "", "expires_at_1": ""},
        is_changed=lambda api_key: api_key.name == "Renamed",
        viewers=MEMBERS,
        adders=EDITORS,
        changers=EDITORS,
    ),
    AdminTarget(
        admin_name="tenants_membership",
        row=lambda rows: rows.membership,
        change_data=lambda rows: {"role": Role.FINANCE},
        is_changed=lambda membership: membership.role == Role.FINANCE,
        viewers=MEMBERS,
        adders=EDITORS,
        changers=EDITORS,
    ),
    AdminTarget(
        admin_name="routing_tenantmodelaccess",
        row=lambda rows: rows.model_access,
        change_data=lambda rows: {"default_model": "", "allowed_models": [rows.catalog_model.pk]},
        is_changed=lambda access: access.default_model_id is None,
        viewers=MEMBERS,
        adders=EDITORS,
        changers=EDITORS,
    ),
    AdminTarget(
        admin_name="billing_usagerecord",
        row=lambda rows: rows.usage_record,
        change_data=lambda rows: {"http_status": 500},
        is_changed=lambda record: record.http_status == 500,
        viewers=MEMBERS,
        adders=NOBODY,
        changers=NOBODY,
    ),
    AdminTarget(
        admin_name="billing_qualityslo",
        row=lambda rows: rows.quality_slo,
        change_data=lambda rows: {
            "lever": "routing",
            "rule": "",
            "min_agreement": "0.9",
            "min_samples": "30",
            "window_days": "7",
            "action": "none",
            "is_active": "on",
        },
        is_changed=lambda slo: slo.min_agreement == Decimal("0.9"),
        viewers=MEMBERS,
        adders=EDITORS,
        changers=EDITORS,
    ),
    AdminTarget(
        admin_name="billing_qualityalert",
        row=lambda rows: rows.quality_alert,
        change_data=lambda rows: {"samples": 1},
        is_changed=lambda alert: alert.samples == 1,
        viewers=MEMBERS,
        adders=NOBODY,
        changers=NOBODY,
    ),
    AdminTarget(
        admin_name="billing_shadowevaluation",
        row=lambda rows: rows.shadow_evaluation,
        change_data=lambda rows: {"agrees": ""},
        is_changed=lambda evaluation: not evaluation.agrees,
        viewers=MEMBERS,
        adders=NOBODY,
        changers=NOBODY,
    ),
    AdminTarget(
        admin_name="routing_model",
        row=lambda rows: rows.catalog_model,
        change_data=lambda rows: {
            "provider": rows.provider.pk,
            "upstream_name": "remapped-upstream",
            "context_window": 1000,
            "input_price_per_million": "1",
            "cached_input_price_per_million": "0.5",
            "output_price_per_million": "2",
            "batch_price_multiplier": "0.5",
            "is_active": "on",
            "based_on_version": rows.catalog_model.latest_price_version().pk,
        },
        is_changed=lambda model: model.upstream_name == "remapped-upstream",
        viewers=MEMBERS,
        adders=SUPERUSER_ONLY,
        changers=SUPERUSER_ONLY,
        tenant_owned=False,
    ),
    AdminTarget(
        admin_name="routing_provider",
        row=lambda rows: rows.provider,
        change_data=lambda rows: {
            "name": "renamed-provider",
            "kind": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "credential": "",
            "credential_env_var": "",
            "timeout_seconds": "5",
            "is_active": "on",
        },
        is_changed=lambda provider: provider.name == "renamed-provider",
        viewers=SUPERUSER_ONLY,
        adders=SUPERUSER_ONLY,
        changers=SUPERUSER_ONLY,
        tenant_owned=False,
    ),
]
TENANT_OWNED_TARGETS = [target for target in TARGETS if target.tenant_owned]
FORMS_WITH_TENANT_CHOICES = [target for target in TENANT_OWNED_TARGETS if Role.OWNER in target.adders]


def reload(row):
    return type(row)._base_manager.get(pk=row.pk)


@pytest.mark.parametrize("target", TARGETS, ids=str)
@pytest.mark.parametrize("role", ROLES)
def test_changelist_is_open_to_viewers_only(client, world: World, role, target: AdminTarget):
    client.force_login(make_user(role, tenant=world.acme.tenant))

    response = client.get(admin_url(target.admin_name, "changelist"))

    assert response.status_code == (200 if role in target.viewers else 403)


@pytest.mark.parametrize("target", TARGETS, ids=str)
@pytest.mark.parametrize("role", ROLES)
def test_add_form_is_open_to_adders_only(client, world: World, role, target: AdminTarget):
    client.force_login(make_user(role, tenant=world.acme.tenant))

    response = client.get(admin_url(target.admin_name, "add"))

    assert response.status_code == (200 if role in target.adders else 403)


@pytest.mark.parametrize("target", TARGETS, ids=str)
@pytest.mark.parametrize("role", ROLES)
def test_change_is_saved_for_changers_only(client, world: World, role, target: AdminTarget):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    row = target.row(world.acme)

    response = client.post(admin_url(target.admin_name, "change", row.pk), target.change_data(world.acme))

    if role in target.changers:
        assert response.status_code == 302
        assert response.url == admin_url(target.admin_name, "changelist")
        assert target.is_changed(reload(row))
    else:
        assert response.status_code == 403
        assert not target.is_changed(reload(row))


@pytest.mark.parametrize("target", TENANT_OWNED_TARGETS, ids=str)
@pytest.mark.parametrize("role", MEMBER_ROLES)
def test_changelist_lists_own_tenant_and_nothing_of_another(client, world: World, role, target: AdminTarget):
    client.force_login(make_user(role, tenant=world.acme.tenant))

    html = client.get(admin_url(target.admin_name, "changelist")).content.decode()

    assert "acme" in html
    assert "globex" not in html


@pytest.mark.parametrize("target", TENANT_OWNED_TARGETS, ids=str)
def test_superuser_changelist_lists_every_tenant(client, world: World, target: AdminTarget):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))

    html = client.get(admin_url(target.admin_name, "changelist")).content.decode()

    assert "acme" in html
    assert "globex" in html


@pytest.mark.parametrize("view", ["change", "history"])
@pytest.mark.parametrize("target", TENANT_OWNED_TARGETS, ids=str)
@pytest.mark.parametrize("role", MEMBER_ROLES)
def test_other_tenant_row_answers_like_a_missing_one(client, world: World, role, target: AdminTarget, view):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    other_row = target.row(world.globex)
    missing_pk = type(other_row)._base_manager.order_by("-pk").first().pk + 1000

    response = client.get(admin_url(target.admin_name, view, other_row.pk))
    missing_response = client.get(admin_url(target.admin_name, view, missing_pk))

    # Django's admin redirects to its index, with a "doesn't exist" message, for a row outside get_queryset.
    assert (response.status_code, response.url) == (missing_response.status_code, missing_response.url)
    assert response.url == reverse("admin:index")
    followed = client.get(response.url).content.decode()
    assert f"ID “{other_row.pk}” doesn’t exist" in followed
    assert "globex" not in followed


@pytest.mark.parametrize("target", TENANT_OWNED_TARGETS, ids=str)
@pytest.mark.parametrize("role", MEMBER_ROLES)
def test_other_tenant_row_cannot_be_changed(client, world: World, role, target: AdminTarget):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    other_row = target.row(world.globex)

    response = client.post(admin_url(target.admin_name, "change", other_row.pk), target.change_data(world.globex))

    # Editors get the missing-row redirect; read-only members are refused before the lookup.
    assert response.status_code == (302 if role in target.changers else 403)
    assert not target.is_changed(reload(other_row))


@pytest.mark.parametrize("target", FORMS_WITH_TENANT_CHOICES, ids=str)
@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_add_form_offers_only_own_tenant(client, world: World, role, target: AdminTarget):
    client.force_login(make_user(role, tenant=world.acme.tenant))

    html = client.get(admin_url(target.admin_name, "add")).content.decode()

    assert "acme" in html
    assert "globex" not in html


OTHER_TENANT_ADD_DATA = {
    Team: lambda rows: {"tenant": rows.tenant.pk, "slug": "smuggled", "name": "smuggled"},
    ApiKey: lambda rows: {"team": rows.team.pk, "name": "smuggled", "expires_at_0": "", "expires_at_1": ""},
    Membership: lambda rows: {"tenant": rows.tenant.pk, "user": "acme-member", "role": Role.OWNER},
    TenantModelAccess: lambda rows: {"tenant": rows.tenant.pk, "allowed_models": [rows.catalog_model.pk]},
    QualitySlo: lambda rows: {
        "tenant": rows.tenant.pk,
        "lever": "compression",
        "min_agreement": "0.9",
        "min_samples": "30",
        "window_days": "7",
        "action": "none",
    },
}


@pytest.mark.parametrize("model", OTHER_TENANT_ADD_DATA, ids=lambda model: model.__name__)
def test_add_into_other_tenant_is_rejected(client, world: World, model):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))
    rows_before = model.objects.unscoped().count()
    admin_name = f"{model._meta.app_label}_{model._meta.model_name}"

    response = client.post(admin_url(admin_name, "add"), OTHER_TENANT_ADD_DATA[model](world.globex))

    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert model.objects.unscoped().count() == rows_before


def test_save_model_refuses_a_row_of_another_tenant(world: World):
    """Behind the form's choices: a Team built for tenant B by an owner of A is refused at save."""
    owner = make_user(Role.OWNER, tenant=world.acme.tenant)
    request = RequestFactory().post("/admin/tenants/team/add/")
    request.user = owner
    team_admin = site.get_model_admin(Team)

    with pytest.raises(PermissionDenied):
        team_admin.save_model(request, Team(tenant=world.globex.tenant, slug="smuggled"), form=None, change=False)

    assert not Team.objects.unscoped().filter(slug="smuggled").exists()


def test_staff_user_without_membership_sees_no_apps(client, world: World):
    client.force_login(make_user(NO_MEMBERSHIP, tenant=world.acme.tenant))

    response = client.get(reverse("admin:index"))

    assert response.status_code == 200
    assert response.context["app_list"] == []


def test_member_index_lists_tenant_models_and_catalog_but_not_providers(client, world: World):
    # Not cache entries nor payload logs either: what users asked and were told is for the tenant's owners and admins.
    client.force_login(make_user(Role.VIEWER, tenant=world.acme.tenant))

    response = client.get(reverse("admin:index"))

    listed = {model["object_name"] for app in response.context["app_list"] for model in app["models"]}
    assert listed == {
        "Tenant",
        "Team",
        "ApiKey",
        "Membership",
        "TenantModelAccess",
        "UsageRecord",
        "Model",
        "RoutingPolicy",
        "RoutingPolicyVersion",
        "RoutingPolicyAudit",
        "Budget",
        "RateLimit",
        "AlertChannel",
        "BudgetAlert",
        "AlertDelivery",
        "Anomaly",
        "QualitySlo",
        "QualityAlert",
        "ShadowEvaluation",
        "Batch",
        "Job",
        "AuditEvent",
        "PayloadLogSettings",
        "EvaluationSettings",
    }


class TestOwnerOfOneTenantViewerOfAnother:
    """Rows the user may only view are listed next to rows they edit; edits must still be refused on them."""

    @pytest.fixture
    def user(self, client, world: World):
        user = make_user(Role.OWNER, tenant=world.acme.tenant)
        membership_set(tenant=world.globex.tenant, user=user, role=Role.VIEWER)
        client.force_login(user)
        return user

    def test_sees_both_tenants(self, client, world: World, user):
        html = client.get(admin_url("tenants_team", "changelist")).content.decode()

        assert "acme-team" in html
        assert "globex-team" in html

    def test_cannot_change_the_viewed_tenant(self, client, world: World, user):
        response = client.post(admin_url("tenants_team", "change", world.globex.team.pk), {"name": "Renamed"})

        assert response.status_code == 403
        assert reload(world.globex.team).name != "Renamed"

    def test_add_form_offers_only_the_owned_tenant(self, client, world: World, user):
        html = client.get(admin_url("tenants_team", "add")).content.decode()

        assert "acme" in html
        assert "globex" not in html

    def test_revoke_action_refuses_a_selection_with_viewed_keys(self, client, world: World, user):
        response = client.post(
            admin_url("tenants_apikey", "changelist"),
            {"action": "revoke_keys", "_selected_action": [world.acme.api_key.pk, world.globex.api_key.pk]},
        )

        assert response.status_code == 403
        assert reload(world.acme.api_key).revoked_at is None
        assert reload(world.globex.api_key).revoked_at is None

    def test_bulk_delete_refuses_viewed_rows(self, client, world: World, user):
        response = client.post(
            admin_url("tenants_membership", "changelist"),
            {"action": "delete_selected", "_selected_action": [world.globex.membership.pk], "post": "yes"},
        )

        assert response.status_code == 403
        assert reload(world.globex.membership)


def test_membership_add_takes_a_username_and_lists_no_users(client, world: World):
    admin = make_user(Role.ADMIN, tenant=world.acme.tenant)
    newcomer = UserFactory(username="newcomer")
    # Users an admin may add are those of the tenants they edit (users_addable_by): here globex, where both are.
    membership_set(tenant=world.globex.tenant, user=admin, role=Role.ADMIN)
    membership_set(tenant=world.globex.tenant, user=newcomer, role=Role.VIEWER)
    client.force_login(admin)

    form_html = client.get(admin_url("tenants_membership", "add")).content.decode()
    response = client.post(
        admin_url("tenants_membership", "add"),
        {"tenant": world.acme.tenant.pk, "user": "newcomer", "role": Role.FINANCE},
    )

    assert "acme-member" not in form_html
    assert response.status_code == 302
    assert newcomer.tenant_memberships.get(tenant=world.acme.tenant).role == Role.FINANCE


def _add_membership(client, tenant, username: str):
    data = {"tenant": tenant.pk, "user": username, "role": Role.VIEWER}
    return client.post(admin_url("tenants_membership", "add"), data)


def _form_errors(response) -> list[str]:
    return [str(error) for error in response.context["adminform"].form.errors.get("user", [])]


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_an_editor_cannot_add_someone_of_another_tenant_and_cannot_tell_who_exists(client, world: World, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    memberships = Membership.objects.unscoped().count()

    someone_elses = _add_membership(client, world.acme.tenant, "globex-member")
    nobody = _add_membership(client, world.acme.tenant, "no-such-user-at-all")

    assert someone_elses.status_code == nobody.status_code == 200
    assert _form_errors(someone_elses) == _form_errors(nobody) == ["No user with this username that you may add."]
    assert Membership.objects.unscoped().count() == memberships
    assert not Membership.objects.unscoped().filter(tenant=world.acme.tenant, user__username="globex-member").exists()


def test_an_editor_may_bring_a_member_of_one_of_their_tenants_into_another(client, world: World):
    owner = make_user(Role.OWNER, tenant=world.acme.tenant)
    membership_set(tenant=world.globex.tenant, user=owner, role=Role.ADMIN)
    client.force_login(owner)

    response = _add_membership(client, world.acme.tenant, "globex-member")

    assert response.status_code == 302
    assert Membership.objects.unscoped().filter(tenant=world.acme.tenant, user__username="globex-member").exists()


def test_a_superuser_may_add_any_active_user(client, world: World):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))
    UserFactory(username="brand-new")

    assert _add_membership(client, world.acme.tenant, "brand-new").status_code == 302
    assert Membership.objects.unscoped().filter(tenant=world.acme.tenant, user__username="brand-new").exists()
