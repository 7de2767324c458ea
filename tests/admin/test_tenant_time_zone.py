"""A tenant's time zone is one zoneinfo knows: budgets, reports, statements and the rollups count its days in it."""

import pytest
from django.core.exceptions import ValidationError

from tenants.models import Role, Tenant
from tests.admin.scenario import World, admin_url, make_user

CHANGE = {"name": "Acme", "is_active": "on"}


def stored_time_zone(tenant: Tenant) -> str:
    return Tenant.objects.unscoped().get(pk=tenant.pk).time_zone


# A misspelling, and a folder of the zoneinfo database (ZoneInfo raises an OSError for it, not a lookup error).
@pytest.mark.parametrize("time_zone", ["Europe/Londn", "Europe"])
def test_an_owner_setting_an_unknown_time_zone_gets_a_form_error_and_the_zone_is_unchanged(
    client, world: World, time_zone
):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    response = client.post(
        admin_url("tenants_tenant", "change", world.acme.tenant.pk), {**CHANGE, "time_zone": time_zone}
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["time_zone"]
    assert f"“{time_zone}” is not a time zone" in errors["time_zone"][0]
    assert stored_time_zone(world.acme.tenant) == "UTC"


def test_an_owner_sets_a_time_zone_zoneinfo_knows(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    response = client.post(
        admin_url("tenants_tenant", "change", world.acme.tenant.pk), {**CHANGE, "time_zone": "Europe/London"}
    )

    assert response.status_code == 302
    assert stored_time_zone(world.acme.tenant) == "Europe/London"


def test_full_clean_refuses_an_unknown_time_zone(world: World):
    tenant = Tenant.objects.unscoped().get(pk=world.acme.tenant.pk)
    tenant.time_zone = "Europe/Londn"

    with pytest.raises(ValidationError) as refused:
        tenant.full_clean()

    assert list(refused.value.message_dict) == ["time_zone"]
