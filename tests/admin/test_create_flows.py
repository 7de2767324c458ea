"""Rows added in the admin are created by the apps' services and land in the tenant chosen."""

from billing.models import RateLimit
from routing.models import TenantModelAccess
from tenants.models import Role, Team, Tenant
from tenants.services import tenant_create
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user


def test_superuser_adds_a_tenant(client, world: World):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))

    response = client.post(admin_url("tenants_tenant", "add"), {"slug": "initech", "name": "Initech"})

    assert response.status_code == 302
    assert Tenant.objects.unscoped().get(slug="initech").name == "Initech"


def test_duplicate_tenant_slug_is_a_form_error(client, world: World):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))

    response = client.post(admin_url("tenants_tenant", "add"), {"slug": "acme", "name": "Another Acme"})

    assert response.status_code == 200
    assert Tenant.objects.unscoped().filter(slug="acme").count() == 1


def test_owner_adds_a_team_to_their_tenant(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    response = client.post(
        admin_url("tenants_team", "add"), {"tenant": world.acme.tenant.pk, "slug": "research", "name": "Research"}
    )

    assert response.status_code == 302
    assert Team.objects.unscoped().get(slug="research").tenant == world.acme.tenant


def test_owner_sets_model_access_for_a_tenant_without_it(client, world: World):
    initech = tenant_create(slug="initech")
    user = make_user(Role.OWNER, tenant=initech)
    client.force_login(user)
    model = world.acme.catalog_model

    response = client.post(
        admin_url("routing_tenantmodelaccess", "add"),
        {"tenant": initech.pk, "default_model": model.pk, "allowed_models": [model.pk]},
    )

    assert response.status_code == 302
    access = TenantModelAccess.objects.unscoped().get(tenant=initech)
    assert (access.default_model, list(access.allowed_models.all())) == (model, [model])


def test_default_model_outside_the_allowed_ones_is_a_form_error(client, world: World):
    client.force_login(make_user(Role.ADMIN, tenant=world.acme.tenant))
    access = world.acme.model_access

    response = client.post(
        admin_url("routing_tenantmodelaccess", "change", access.pk),
        {"default_model": world.acme.catalog_model.pk, "allowed_models": []},
    )

    assert response.status_code == 200
    assert "must be one of the allowed models" in response.content.decode()
    assert list(access.allowed_models.all()) == [world.acme.catalog_model]


def test_a_rate_limit_added_switched_off_stays_off(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    response = client.post(
        admin_url("billing_ratelimit", "add"),
        {
            "tenant": world.acme.tenant.pk,
            "team": world.acme.team.pk,
            "api_key": "",
            "requests_per_minute": 10,
            "tokens_per_minute": "",
        },
    )

    assert response.status_code == 302
    assert RateLimit.objects.for_tenant(world.acme.tenant).get().is_active is False
