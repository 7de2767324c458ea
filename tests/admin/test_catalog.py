from decimal import Decimal

import pytest

from core.crypto import decrypt_secret
from routing.models import Model, ModelKind, Provider, ProviderKind
from routing.services import provider_create
from tenants.models import Role
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user
from tests.admin.test_prices import change_form

CREDENTIAL = "sk-live-typed-into-the-admin-1234"


@pytest.fixture
def superuser_client(client, world: World):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))
    return client


def provider_form_data(**overrides) -> dict:
    return {
        "name": "openai-eu",
        "kind": "openai",
        "base_url": "https://api.example.com/v1",
        "credential": "",
        "credential_env_var": "",
        "timeout_seconds": "30",
        "is_active": "on",
        **overrides,
    }


def admin_pages_of(client, provider: Provider) -> list[str]:
    urls = [
        admin_url("routing_provider", "changelist"),
        admin_url("routing_provider", "change", provider.pk),
        admin_url("routing_provider", "history", provider.pk),
    ]
    return [client.get(url).content.decode() for url in urls]


def test_provider_credential_is_stored_encrypted_and_never_shown(superuser_client):
    response = superuser_client.post(admin_url("routing_provider", "add"), provider_form_data(credential=CREDENTIAL))

    assert response.status_code == 302
    provider = Provider.objects.get(name="openai-eu")
    assert CREDENTIAL not in provider.credential_encrypted
    assert decrypt_secret(provider.credential_encrypted) == CREDENTIAL
    for html in admin_pages_of(superuser_client, provider):
        assert CREDENTIAL not in html
        assert provider.credential_encrypted not in html


def test_blank_credential_on_change_keeps_the_stored_one(superuser_client):
    provider = provider_create(name="openai-eu", base_url="https://api.example.com/v1", credential=CREDENTIAL)

    superuser_client.post(admin_url("routing_provider", "change", provider.pk), provider_form_data(timeout_seconds="9"))

    provider.refresh_from_db()
    assert provider.timeout_seconds == Decimal("9")
    assert decrypt_secret(provider.credential_encrypted) == CREDENTIAL


def test_new_credential_on_change_replaces_the_stored_one(superuser_client):
    provider = provider_create(name="openai-eu", base_url="https://api.example.com/v1", credential=CREDENTIAL)

    superuser_client.post(
        admin_url("routing_provider", "change", provider.pk), provider_form_data(credential="sk-rotated")
    )

    provider.refresh_from_db()
    assert decrypt_secret(provider.credential_encrypted) == "sk-rotated"
    for html in admin_pages_of(superuser_client, provider):
        assert "sk-rotated" not in html


@pytest.mark.parametrize(("credential", "icon"), [(CREDENTIAL, "icon-yes.svg"), ("", "icon-no.svg")])
def test_change_page_says_whether_a_credential_is_stored(superuser_client, credential, icon):
    provider = provider_create(name="openai-eu", base_url="https://api.example.com/v1", credential=credential)

    html = superuser_client.get(admin_url("routing_provider", "change", provider.pk)).content.decode()

    assert icon in html


# What the admin's add form takes for each kind of provider: every kind must be addable there.
PROVIDER_OF_EACH_KIND = {
    ProviderKind.OPENAI: {"base_url": "https://api.example.com/v1", "credential": "sk-openai-key"},
    ProviderKind.ANTHROPIC: {"base_url": "https://api.anthropic.example/v1", "credential": "sk-ant-key"},
    ProviderKind.BEDROCK: {"base_url": "", "region": "eu-west-1", "credential": "AKIDEXAMPLE:secret"},
}


def test_every_provider_kind_has_an_add_case():
    assert set(PROVIDER_OF_EACH_KIND) == set(ProviderKind)


@pytest.mark.parametrize(
    ("kind", "fields"), [pytest.param(*case, id=case[0]) for case in PROVIDER_OF_EACH_KIND.items()]
)
def test_superuser_adds_a_provider_of_each_kind(superuser_client, kind, fields):
    form = superuser_client.get(admin_url("routing_provider", "add")).content.decode()
    response = superuser_client.post(
        admin_url("routing_provider", "add"), provider_form_data(name=f"{kind}-added", kind=kind, **fields)
    )

    assert response.status_code == 302
    provider = Provider.objects.get(name=f"{kind}-added")
    assert (provider.kind, provider.base_url, provider.region) == (kind, fields["base_url"], fields.get("region", ""))
    assert decrypt_secret(provider.credential_encrypted) == fields["credential"]
    for name in fields:
        assert f'name="{name}"' in form


def test_bedrock_provider_without_a_region_is_a_form_error(superuser_client):
    response = superuser_client.post(
        admin_url("routing_provider", "add"), provider_form_data(name="aws", kind="bedrock", base_url="", region="")
    )

    assert response.status_code == 200
    assert "region" in response.context["adminform"].form.errors
    assert not Provider.objects.filter(name="aws").exists()


def large_model_form(world: World) -> dict:
    """The admin's add form for a model "large" on acme's provider."""
    return {
        "name": "large",
        "kind": "chat",
        "provider": world.acme.provider.pk,
        "upstream_name": "mock-large",
        "context_window": "200000",
        "input_price_per_million": "2.5",
        "cached_input_price_per_million": "1.25",
        "output_price_per_million": "10",
    }


def test_superuser_adds_a_model_to_the_catalog(superuser_client, world: World):
    response = superuser_client.post(
        admin_url("routing_model", "add"),
        large_model_form(world),
    )

    assert response.status_code == 302
    model = Model.objects.get(name="large")
    assert (model.provider, model.price_in_force().output_price_per_million) == (world.acme.provider, Decimal("10"))


def test_a_model_s_kind_is_chosen_when_it_is_added_and_kept(superuser_client, world: World):
    form = {
        "name": "embedder",
        "kind": "embedding",
        "provider": world.acme.provider.pk,
        "upstream_name": "text-embedding-3-small",
        "context_window": "8191",
        "input_price_per_million": "0.02",
        "cached_input_price_per_million": "0.02",
        "output_price_per_million": "0",
    }
    assert superuser_client.post(admin_url("routing_model", "add"), form).status_code == 302
    model = Model.objects.get(name="embedder")

    page = superuser_client.get(admin_url("routing_model", "change", model.pk)).content.decode()

    assert model.kind == ModelKind.EMBEDDING
    assert 'name="kind"' not in page and "Embedding" in page


def test_a_model_s_name_is_kept_on_change_as_published_policies_name_it(superuser_client, world: World):
    model = world.acme.catalog_model
    url = admin_url("routing_model", "change", model.pk)

    page = superuser_client.get(url).content.decode()
    # A form posted with a name anyway (crafted, or from a page served before the name was read-only).
    response = superuser_client.post(url, change_form(world, name="renamed-model", context_window="64000"))

    assert 'name="name"' not in page and model.name in page
    assert response.status_code == 302
    model.refresh_from_db()
    assert (model.name, model.context_window) == ("catalog-small", 64000)
    assert not Model.objects.filter(name="renamed-model").exists()


@pytest.mark.parametrize("role", [Role.OWNER, Role.VIEWER])
def test_member_sees_model_names_and_prices_but_not_its_provider(client, world: World, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    model = world.acme.catalog_model

    for url in (admin_url("routing_model", "changelist"), admin_url("routing_model", "change", model.pk)):
        html = client.get(url).content.decode()
        assert model.name in html
        assert "0.150000" in html
        assert model.provider.name not in html
        assert model.upstream_name not in html


def test_only_superusers_read_a_models_change_log(client, world: World):
    """Django's history page lists who changed the model: platform staff, whom members never see named."""
    staff = make_user(SUPERUSER, tenant=world.acme.tenant)
    staff.username = "ops-alice"
    staff.save()
    client.force_login(staff)
    client.post(
        admin_url("routing_model", "add"),
        large_model_form(world),
    )
    history = admin_url("routing_model", "history", Model.objects.get(name="large").pk)

    as_staff = client.get(history)
    answers = {}
    for role in (Role.OWNER, Role.ADMIN, Role.FINANCE, Role.VIEWER):
        client.force_login(make_user(role, tenant=world.acme.tenant))
        answers[role] = client.get(history)

    assert as_staff.status_code == 200 and "ops-alice" in as_staff.content.decode()
    assert {role: answer.status_code for role, answer in answers.items()} == dict.fromkeys(answers, 403)
    assert not any("ops-alice" in answer.content.decode() for answer in answers.values())


@pytest.mark.parametrize("role", [Role.OWNER, Role.VIEWER])
def test_member_cannot_filter_the_catalog_by_its_provider_or_upstream_name(client, world: World, role):
    model = world.acme.catalog_model
    client.force_login(make_user(role, tenant=world.acme.tenant))
    changelist = admin_url("routing_model", "changelist")
    probes = (
        {"upstream_name__startswith": model.upstream_name[:3]},
        {"upstream_name__startswith": "no-such-upstream"},
        {"provider__exact": model.provider.pk},
        {"provider_id__exact": model.provider.pk + 1},
        {"provider__name__startswith": "hidden"},
    )

    # Refused whatever the guess: the answer says nothing about the hidden fields.
    assert [client.get(changelist, probe).status_code for probe in probes] == [400] * len(probes)
    assert client.get(changelist, {"kind__exact": model.kind}).status_code == 200


def test_superusers_filter_the_catalog_by_provider_and_upstream_name(superuser_client, world: World):
    model = world.acme.catalog_model
    changelist = admin_url("routing_model", "changelist")

    by_upstream = superuser_client.get(changelist, {"upstream_name__startswith": model.upstream_name})
    by_provider = superuser_client.get(changelist, {"provider__exact": model.provider.pk})

    assert list(by_upstream.context["cl"].result_list) == list(by_provider.context["cl"].result_list) == [model]


@pytest.mark.parametrize("changelist", ["routing_provider", "routing_model"])
def test_a_catalog_filter_holding_nul_is_a_400(superuser_client, world: World, changelist):
    response = superuser_client.get(admin_url(changelist, "changelist"), {"kind": "\x00", "name__startswith": "a\x00"})

    assert response.status_code == 400 and b"NUL" in response.content
