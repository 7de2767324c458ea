import re
from datetime import timedelta

from django.utils import timezone

from tenants.keys import parse_key, secret_matches
from tenants.models import ApiKey, Role
from tests.admin.scenario import World, admin_url, make_user

FULL_KEY = re.compile(r"llmops-[0-9a-f]{12}-[A-Za-z0-9_-]+")


def add_key(client, world: World, **overrides):
    data = {"team": world.acme.team.pk, "name": "ci", "expires_at_0": "", "expires_at_1": "", **overrides}
    return client.post(admin_url("tenants_apikey", "add"), data, follow=True)


def test_new_key_is_shown_once_and_only_its_hash_is_stored(client, world: World):
    client.force_login(make_user(Role.ADMIN, tenant=world.acme.tenant))

    response = add_key(client, world)

    page = response.content.decode()
    [full_key] = set(FULL_KEY.findall(page))
    parsed = parse_key(full_key)
    api_key = ApiKey.objects.unscoped().get(prefix=parsed.prefix)
    assert (api_key.tenant, api_key.team, api_key.name) == (world.acme.tenant, world.acme.team, "ci")
    assert secret_matches(parsed.secret, api_key.secret_hash)
    stored_values = [str(getattr(api_key, field.attname)) for field in ApiKey._meta.concrete_fields]
    assert not any(parsed.secret in value for value in stored_values)
    for url in (admin_url("tenants_apikey", "change", api_key.pk), admin_url("tenants_apikey", "changelist")):
        html = client.get(url).content.decode()
        assert parsed.secret not in html
        assert api_key.secret_hash not in html


def test_key_with_past_expiry_is_a_form_error(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))
    yesterday = timezone.now() - timedelta(days=1)

    response = add_key(client, world, expires_at_0=yesterday.date().isoformat(), expires_at_1="12:00:00")

    assert response.status_code == 200
    assert "must be in the future" in response.content.decode()
    assert not ApiKey.objects.unscoped().filter(name="ci").exists()


def test_revoke_action_revokes_selected_keys(client, world: World):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    response = client.post(
        admin_url("tenants_apikey", "changelist"),
        {"action": "revoke_keys", "_selected_action": [world.acme.api_key.pk]},
        follow=True,
    )

    world.acme.api_key.refresh_from_db()
    assert world.acme.api_key.revoked_at is not None
    assert "Revoked 1 key(s)." in response.content.decode()


def test_read_only_member_is_not_offered_the_revoke_action(client, world: World):
    client.force_login(make_user(Role.FINANCE, tenant=world.acme.tenant))

    client.post(
        admin_url("tenants_apikey", "changelist"),
        {"action": "revoke_keys", "_selected_action": [world.acme.api_key.pk]},
    )

    world.acme.api_key.refresh_from_db()
    assert world.acme.api_key.revoked_at is None
