from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tenants.models import Team, Tenant
from tests.factories import TenantFactory


def run_create_tenant(*args: str) -> str:
    stdout = StringIO()
    call_command("create_tenant", *args, stdout=stdout)
    return stdout.getvalue()


def test_creates_the_tenant_and_its_teams(db):
    output = run_create_tenant("--slug", "acme", "--name", "Acme Corp", "--team", "support", "--team", "analytics")

    tenant = Tenant.objects.unscoped().get(slug="acme")
    assert tenant.name == "Acme Corp"
    assert sorted(tenant.teams.values_list("slug", flat=True)) == ["analytics", "support"]
    assert "acme" in output and "analytics, support" in output


def test_name_defaults_to_the_slug_and_teams_are_optional(db):
    run_create_tenant("--slug", "globex")

    tenant = Tenant.objects.unscoped().get(slug="globex")
    assert tenant.name == "globex"
    assert not tenant.teams.exists()


def test_refuses_a_duplicate_slug_and_changes_nothing(db):
    existing = TenantFactory(slug="acme", name="Original")

    with pytest.raises(CommandError, match="already exists"):
        run_create_tenant("--slug", "acme", "--name", "Impostor", "--team", "support")

    assert Tenant.objects.unscoped().get(slug="acme").name == "Original"
    assert not Team.objects.for_tenant(existing).exists()


def test_refuses_an_invalid_slug_and_creates_nothing(db):
    with pytest.raises(CommandError, match="slug"):
        run_create_tenant("--slug", "not a slug", "--team", "support")

    assert not Tenant.objects.unscoped().exists()
    assert not Team.objects.unscoped().exists()


def test_an_invalid_team_slug_leaves_no_tenant_behind(db):
    with pytest.raises(CommandError, match="acme"):
        run_create_tenant("--slug", "acme", "--team", "support", "--team", "bad team")

    assert not Tenant.objects.unscoped().exists()
    assert not Team.objects.unscoped().exists()
