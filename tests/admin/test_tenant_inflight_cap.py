"""A tenant's cap on requests in flight is set in the admin by the platform, and only read by the tenant's own admins:
it protects the other tenants."""

from tenants.models import Role, Tenant
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user

CHANGE = {"name": "Acme", "time_zone": "UTC", "is_active": "on"}


def test_a_superuser_sets_a_tenants_cap_on_requests_in_flight(client, world: World):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))

    response = client.post(
        admin_url("tenants_tenant", "change", world.acme.tenant.pk), {**CHANGE, "max_inflight_requests": "40"}
    )

    assert response.status_code == 302
    assert Tenant.objects.unscoped().get(pk=world.acme.tenant.pk).max_inflight_requests == 40


def test_a_tenant_owner_sees_the_cap_but_cannot_change_it(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))
    url = admin_url("tenants_tenant", "change", world.acme.tenant.pk)

    page = client.get(url).content.decode()
    response = client.post(url, {**CHANGE, "name": "Renamed", "max_inflight_requests": "100000"})

    assert "Max requests in flight" in page and 'name="max_inflight_requests"' not in page
    assert response.status_code == 302
    tenant = Tenant.objects.unscoped().get(pk=world.acme.tenant.pk)
    assert (tenant.name, tenant.max_inflight_requests) == ("Renamed", None)
