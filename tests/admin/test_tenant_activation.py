"""Deactivating and reactivating a tenant is the platform's call (a tenant disabled for non-payment must not enable
itself again): its owners and admins see whether it is active but cannot change it, in the form or behind it."""

import pytest
from django.contrib.admin import site
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory

from tenants.models import Role, Tenant
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user

CHANGE = {"name": "Acme", "time_zone": "UTC"}


def is_active(tenant: Tenant) -> bool:
    return Tenant.objects.unscoped().get(pk=tenant.pk).is_active


def test_a_superuser_deactivates_and_reactivates_a_tenant(client, world: World):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))
    url = admin_url("tenants_tenant", "change", world.acme.tenant.pk)

    deactivated = client.post(url, CHANGE)
    was_active = is_active(world.acme.tenant)
    reactivated = client.post(url, {**CHANGE, "is_active": "on"})

    assert (deactivated.status_code, reactivated.status_code) == (302, 302)
    assert (was_active, is_active(world.acme.tenant)) == (False, True)


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_a_tenant_editor_sees_whether_the_tenant_is_active_but_cannot_switch_it(client, world: World, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    url = admin_url("tenants_tenant", "change", world.acme.tenant.pk)

    page = client.get(url).content.decode()
    # A checkbox left out of a POST means "off": this one would deactivate the tenant.
    deactivating = client.post(url, {**CHANGE, "name": "Renamed"})
    renamed = Tenant.objects.unscoped().get(pk=world.acme.tenant.pk)
    Tenant.objects.unscoped().filter(pk=world.acme.tenant.pk).update(is_active=False)
    reactivating = client.post(url, {**CHANGE, "is_active": "on"})

    assert "Is active" in page and 'name="is_active"' not in page
    assert (deactivating.status_code, reactivating.status_code) == (302, 302)
    # The rest of the form is saved; the tenant stays as the platform set it.
    assert (renamed.name, renamed.is_active) == ("Renamed", True)
    assert not is_active(world.acme.tenant)


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_save_model_refuses_an_editor_switching_the_tenant_on_or_off(world: World, role):
    """Behind the form: a tenant whose is_active was changed by anything but a superuser is not saved."""
    request = RequestFactory().post("/admin/tenants/tenant/")
    request.user = make_user(role, tenant=world.acme.tenant)
    tenant = Tenant.objects.unscoped().get(pk=world.acme.tenant.pk)
    tenant.is_active, tenant.name = False, "Renamed"

    with pytest.raises(PermissionDenied):
        site.get_model_admin(Tenant).save_model(request, tenant, form=None, change=True)

    stored = Tenant.objects.unscoped().get(pk=world.acme.tenant.pk)
    assert (stored.is_active, stored.name) == (True, "Acme")
