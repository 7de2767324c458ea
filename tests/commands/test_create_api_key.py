from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tenants.keys import parse_key, secret_matches
from tenants.models import ApiKey
from tests.factories import TeamFactory, TenantFactory


def run_create_api_key(*args: str) -> str:
    stdout = StringIO()
    call_command("create_api_key", *args, stdout=stdout)
    return stdout.getvalue()


def printed_keys(output: str) -> list[str]:
    return [line for line in output.splitlines() if parse_key(line) is not None]


@pytest.fixture
def acme_support(db):
    return TeamFactory(tenant=TenantFactory(slug="acme"), slug="support")


@pytest.fixture
def globex_support(db):
    return TeamFactory(tenant=TenantFactory(slug="globex"), slug="support")


def test_prints_a_key_that_authenticates_once(acme_support):
    output = run_create_api_key("--tenant", "acme", "--team", "support", "--name", "ci")

    [full_key] = printed_keys(output)
    prefix, secret = parse_key(full_key)
    api_key = ApiKey.objects.unscoped().get(prefix=prefix)
    assert secret_matches(secret, api_key.secret_hash)
    assert (api_key.tenant, api_key.team, api_key.name) == (acme_support.tenant, acme_support, "ci")
    assert api_key.expires_at is None
    assert "cannot be shown again" in output
    assert output.count(secret) == 1


def test_picks_the_team_of_the_named_tenant_when_slugs_collide(acme_support, globex_support):
    output = run_create_api_key("--tenant", "globex", "--team", "support")

    [full_key] = printed_keys(output)
    api_key = ApiKey.objects.unscoped().get(prefix=parse_key(full_key).prefix)
    assert api_key.team == globex_support
    assert api_key.tenant == globex_support.tenant


def test_expiry_is_counted_in_days_from_now(acme_support):
    before = timezone.now()
    output = run_create_api_key("--tenant", "acme", "--team", "support", "--expires-in-days", "7")

    api_key = ApiKey.objects.unscoped().get(prefix=parse_key(printed_keys(output)[0]).prefix)
    assert before + timedelta(days=7) <= api_key.expires_at <= timezone.now() + timedelta(days=7)


def test_refuses_a_team_of_another_tenant(acme_support):
    TeamFactory(tenant=TenantFactory(slug="globex"), slug="globex-only")

    with pytest.raises(CommandError, match="tenant 'acme' has no team 'globex-only'"):
        run_create_api_key("--tenant", "acme", "--team", "globex-only")

    assert not ApiKey.objects.unscoped().exists()


def test_refuses_an_unknown_tenant(acme_support):
    with pytest.raises(CommandError, match="no tenant with slug 'initech'"):
        run_create_api_key("--tenant", "initech", "--team", "support")

    assert not ApiKey.objects.unscoped().exists()


@pytest.mark.parametrize("days", ["0", "-1", "soon"])
def test_refuses_an_expiry_that_is_not_a_positive_number_of_days(acme_support, days):
    with pytest.raises(CommandError, match="--expires-in-days"):
        run_create_api_key("--tenant", "acme", "--team", "support", "--expires-in-days", days)

    assert not ApiKey.objects.unscoped().exists()
