"""The catalog's prices in the admin: a change is a new version, the history is shown, an old price is flagged."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import ProtectedError
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from routing.models import Model, ModelPrice
from routing.prices import model_price_set
from tenants.models import Role
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user
from tests.factories import UsageRecordFactory

STALE_MARKER = 'class="price-stale"'


@pytest.fixture
def superuser_client(client, world: World):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))
    return client


def change_form(world: World, **overrides) -> dict:
    """The change form as posted from a page opened now: based on the model's latest price version."""
    model = world.acme.catalog_model
    return {
        "based_on_version": str(model.latest_price_version().pk),
        "name": model.name,
        "provider": model.provider.pk,
        "upstream_name": model.upstream_name,
        "context_window": str(model.context_window),
        "max_output_tokens": "",
        "supports_tools": "on",
        "supports_images": "on",
        "batch_price_multiplier": "0.5",
        "is_active": "on",
        "input_price_per_million": "0.15",
        "cached_input_price_per_million": "0.075",
        "output_price_per_million": "0.60",
        "cache_write_price_per_million": "",
        "price_effective_from_0": "",
        "price_effective_from_1": "",
        **overrides,
    }


def backdate(model, *, days: int) -> None:
    """Make the model's only version take effect ``days`` ago (as if priced then)."""
    ModelPrice.objects.filter(model=model).update(effective_from=timezone.now() - timedelta(days=days))


def test_a_price_change_in_the_admin_is_a_new_version_and_the_old_one_stays(superuser_client, world: World):
    model = world.acme.catalog_model
    first = model.price_in_force()

    response = superuser_client.post(
        admin_url("routing_model", "change", model.pk), change_form(world, output_price_per_million="0.90")
    )

    assert response.status_code == 302
    versions = list(ModelPrice.objects.filter(model=model).order_by("effective_from"))
    assert [v.output_price_per_million for v in versions] == [Decimal("0.60"), Decimal("0.90")]
    assert versions[0] == first and versions[0].input_price_per_million == Decimal("0.15")
    assert versions[1].source == "admin" and versions[1].created_by.is_superuser
    assert model.price_in_force().output_price_per_million == Decimal("0.90")


def test_saving_a_model_without_changing_a_price_adds_no_version(superuser_client, world: World):
    model = world.acme.catalog_model

    response = superuser_client.post(
        admin_url("routing_model", "change", model.pk), change_form(world, context_window="64000")
    )

    assert response.status_code == 302
    assert ModelPrice.objects.filter(model=model).count() == 1
    model.refresh_from_db()
    assert model.context_window == 64000


def test_prices_given_an_effective_date_wait_for_it_and_the_history_shows_them(superuser_client, world: World):
    model = world.acme.catalog_model
    later = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    form = change_form(
        world,
        input_price_per_million="0.25",
        price_effective_from_0=later.strftime("%Y-%m-%d"),
        price_effective_from_1=later.strftime("%H:%M:%S"),
    )

    assert superuser_client.post(admin_url("routing_model", "change", model.pk), form).status_code == 302

    assert model.price_in_force().input_price_per_million == Decimal("0.15")
    assert model.price_in_force(later).input_price_per_million == Decimal("0.25")
    html = superuser_client.get(admin_url("routing_model", "change", model.pk)).content.decode()
    history = html[html.index('class="price-history"') :]
    assert history.index("upcoming") < history.index("0.250000") < history.index("in force") < history.index("0.150000")


def test_a_price_cannot_take_effect_in_the_past(superuser_client, world: World):
    model = world.acme.catalog_model
    yesterday = timezone.now() - timedelta(days=1)
    form = change_form(
        world,
        input_price_per_million="0.25",
        price_effective_from_0=yesterday.strftime("%Y-%m-%d"),
        price_effective_from_1=yesterday.strftime("%H:%M:%S"),
    )

    response = superuser_client.post(admin_url("routing_model", "change", model.pk), form)

    assert response.status_code == 200
    assert "price_effective_from" in response.context["adminform"].form.errors
    assert ModelPrice.objects.filter(model=model).count() == 1


def test_the_list_shows_each_price_age_and_marks_an_old_one(superuser_client, world: World, settings):
    settings.LLMOPS_PRICE_MAX_AGE_DAYS = 90
    backdate(world.acme.catalog_model, days=120)

    html = superuser_client.get(admin_url("routing_model", "changelist")).content.decode()

    assert "120 days" in html
    assert STALE_MARKER in html


def test_a_recent_price_is_not_marked(superuser_client, world: World, settings):
    settings.LLMOPS_PRICE_MAX_AGE_DAYS = 90
    backdate(world.acme.catalog_model, days=30)

    html = superuser_client.get(admin_url("routing_model", "changelist")).content.decode()

    assert "30 days" in html
    assert STALE_MARKER not in html


def test_the_change_page_warns_of_an_old_price_past_the_configured_age(superuser_client, world: World, settings):
    model = world.acme.catalog_model
    backdate(model, days=40)
    url = admin_url("routing_model", "change", model.pk)

    settings.LLMOPS_PRICE_MAX_AGE_DAYS = 60
    assert not [m for m in get_messages(superuser_client.get(url).wsgi_request) if "40 days ago" in str(m)]

    settings.LLMOPS_PRICE_MAX_AGE_DAYS = 30
    response = superuser_client.get(url)

    warnings = [str(m) for m in get_messages(response.wsgi_request) if m.level_tag == "warning"]
    assert any("40 days ago" in warning and "LLMOPS_PRICE_MAX_AGE_DAYS (30)" in warning for warning in warnings)
    assert STALE_MARKER in response.content.decode()


def test_a_new_price_resets_the_age(superuser_client, world: World, settings):
    settings.LLMOPS_PRICE_MAX_AGE_DAYS = 90
    model = world.acme.catalog_model
    backdate(model, days=120)

    model_price_set(model=model, prices={"input_price_per_million": Decimal("0.2")}, source="test")

    html = superuser_client.get(admin_url("routing_model", "changelist")).content.decode()
    assert "0 days" in html and STALE_MARKER not in html


@pytest.mark.parametrize("role", [Role.OWNER, Role.VIEWER])
def test_members_see_the_shared_history_and_age_but_cannot_change_a_price(client, world: World, role):
    """The catalog is the platform's, the same for every tenant: members read it, only superusers change it."""
    client.force_login(make_user(role, tenant=world.acme.tenant))
    model = world.acme.catalog_model
    model_price_set(
        model=model,
        prices={"input_price_per_million": Decimal("0.5")},
        effective_from=timezone.now() + timedelta(days=1),
        source="test",
    )

    html = client.get(admin_url("routing_model", "change", model.pk)).content.decode()
    response = client.post(
        admin_url("routing_model", "change", model.pk), change_form(world, input_price_per_million="9")
    )

    assert 'class="price-history"' in html and "0.500000" in html and "upcoming" in html
    assert "0 days" in html
    assert response.status_code == 403
    assert not ModelPrice.objects.filter(model=model, input_price_per_million=Decimal("9")).exists()


@pytest.mark.parametrize("priced_a_request", [True, False])
def test_a_model_with_prices_is_never_deleted_and_the_refusal_reads_no_ledger(world: World, priced_a_request):
    """The ledger has no index on price_version: a deletion that searched it would scan every row."""
    model = world.acme.catalog_model
    if priced_a_request:
        UsageRecordFactory(api_key=world.acme.api_key, request_id="req-priced", price_version=model.price_in_force())

    with CaptureQueriesContext(connection) as queries, pytest.raises(ProtectedError):
        model.delete()

    assert not [query["sql"] for query in queries if "billing_usagerecord" in query["sql"]]
    assert ModelPrice.objects.filter(model=model).exists()


def test_the_admin_offers_no_deletion_of_a_model(superuser_client, world: World):
    model = world.acme.catalog_model

    change_page = superuser_client.get(admin_url("routing_model", "change", model.pk)).content.decode()
    changelist = superuser_client.get(admin_url("routing_model", "changelist")).content.decode()
    refused = superuser_client.post(admin_url("routing_model", "delete", model.pk), {"post": "yes"})

    assert admin_url("routing_model", "delete", model.pk) not in change_page
    assert "delete_selected" not in changelist
    assert refused.status_code == 403
    assert Model.objects.filter(pk=model.pk).exists()
    assert "Untick to retire the model" in change_page


def schedule_input_price(model, price: str, *, days: int = 1):
    return model_price_set(
        model=model,
        prices={"input_price_per_million": Decimal(price)},
        effective_from=timezone.now() + timedelta(days=days),
        source="prices_import next.csv",
    )


def test_the_form_shows_the_scheduled_prices_and_warns_of_them(superuser_client, world: World):
    model = world.acme.catalog_model
    scheduled = schedule_input_price(model, "0.12")

    response = superuser_client.get(admin_url("routing_model", "change", model.pk))

    form = response.context["adminform"].form
    assert form["input_price_per_million"].value() == Decimal("0.12")
    assert form["output_price_per_million"].value() == Decimal("0.60")
    assert form["based_on_version"].value() == scheduled.pk
    assert f'name="based_on_version" value="{scheduled.pk}"' in response.content.decode()
    warnings = [str(m) for m in get_messages(response.wsgi_request) if m.level_tag == "warning"]
    assert any(
        f"scheduled to take effect at {scheduled.effective_from.isoformat(timespec='seconds')}" in warning
        and "prices_import next.csv" in warning
        for warning in warnings
    )


def test_a_price_change_now_is_refused_while_one_is_scheduled(superuser_client, world: World):
    model = world.acme.catalog_model
    scheduled = schedule_input_price(model, "0.12")

    response = superuser_client.post(
        admin_url("routing_model", "change", model.pk),
        change_form(world, input_price_per_million="0.12", output_price_per_million="0.90"),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["price_effective_from"]
    assert any(scheduled.effective_from.isoformat(timespec="seconds") in error for error in errors)
    assert ModelPrice.objects.filter(model=model).count() == 2
    assert model.price_in_force(scheduled.effective_from).output_price_per_million == Decimal("0.60")


def test_a_price_change_after_a_scheduled_one_keeps_its_change(superuser_client, world: World):
    model = world.acme.catalog_model
    scheduled = schedule_input_price(model, "0.12")
    later = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    shown = superuser_client.get(admin_url("routing_model", "change", model.pk)).context["adminform"].form

    response = superuser_client.post(
        admin_url("routing_model", "change", model.pk),
        change_form(
            world,
            # The prices the form shows, as a user saving it unchanged would send them back.
            **{
                name: str(shown[name].value()) for name in ("input_price_per_million", "cached_input_price_per_million")
            },
            output_price_per_million="0.90",
            price_effective_from_0=later.strftime("%Y-%m-%d"),
            price_effective_from_1=later.strftime("%H:%M:%S"),
        ),
    )

    assert response.status_code == 302
    assert model.price_in_force(scheduled.effective_from).prices()["input_price_per_million"] == Decimal("0.12")
    assert model.price_in_force(later).input_price_per_million == Decimal("0.12")
    assert model.price_in_force(later).output_price_per_million == Decimal("0.90")


def test_confirming_unchanged_prices_resets_their_age_without_a_version(superuser_client, world: World, settings):
    settings.LLMOPS_PRICE_MAX_AGE_DAYS = 90
    model = world.acme.catalog_model
    backdate(model, days=120)

    response = superuser_client.post(
        admin_url("routing_model", "changelist"),
        {"action": "prices_confirm", "_selected_action": [model.pk]},
        follow=True,
    )

    html = response.content.decode()
    assert f"Prices confirmed for {model.name}" in html
    assert "0 days" in html and STALE_MARKER not in html
    assert ModelPrice.objects.filter(model=model).count() == 1
    page = superuser_client.get(admin_url("routing_model", "change", model.pk))
    assert not [m for m in get_messages(page.wsgi_request) if m.level_tag == "warning"]


def test_a_confirmation_older_than_the_prices_in_force_does_not_age_them(superuser_client, world: World, settings):
    settings.LLMOPS_PRICE_MAX_AGE_DAYS = 90
    model = world.acme.catalog_model
    backdate(model, days=20)
    Model.objects.filter(pk=model.pk).update(prices_checked_at=timezone.now() - timedelta(days=200))

    html = superuser_client.get(admin_url("routing_model", "changelist")).content.decode()

    assert "20 days" in html and STALE_MARKER not in html


@pytest.mark.parametrize("role", [Role.OWNER, Role.VIEWER])
def test_members_cannot_confirm_prices(client, world: World, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    model = world.acme.catalog_model

    changelist = client.get(admin_url("routing_model", "changelist")).content.decode()
    client.post(admin_url("routing_model", "changelist"), {"action": "prices_confirm", "_selected_action": [model.pk]})

    assert "prices_confirm" not in changelist
    model.refresh_from_db()
    assert model.prices_checked_at is None


@pytest.mark.parametrize("role", [Role.OWNER, Role.VIEWER])
def test_members_see_platform_not_the_staff_username_in_the_history(client, world: World, role):
    model = world.acme.catalog_model
    staff = make_user(SUPERUSER, tenant=world.acme.tenant)
    staff.username = "ops-alice"
    staff.save()
    model_price_set(model=model, prices={"input_price_per_million": Decimal("0.2")}, source="admin", actor=staff)
    client.force_login(make_user(role, tenant=world.acme.tenant))

    html = client.get(admin_url("routing_model", "change", model.pk)).content.decode()

    history = html[html.index('class="price-history"') :]
    assert "ops-alice" not in html
    assert "<td>platform</td>" in history


def test_superusers_see_who_saved_each_version(superuser_client, world: World):
    model = world.acme.catalog_model
    staff = make_user(SUPERUSER, tenant=world.acme.tenant)
    staff.username = "ops-alice"
    staff.save()
    model_price_set(model=model, prices={"input_price_per_million": Decimal("0.2")}, source="admin", actor=staff)

    html = superuser_client.get(admin_url("routing_model", "change", model.pk)).content.decode()

    assert "<td>ops-alice</td>" in html[html.index('class="price-history"') :]


def test_a_price_change_from_a_page_opened_before_another_change_is_refused(superuser_client, world: World):
    """Admins A and B open the page at the same prices; A saves an output price, then B an input price: B's form still
    holds A's old output price, and saving it would undo A's change without a word."""
    model = world.acme.catalog_model
    form_b = change_form(world, input_price_per_million="0.20")
    a_version = model_price_set(model=model, prices={"output_price_per_million": Decimal("0.90")}, source="admin")

    response = superuser_client.post(admin_url("routing_model", "change", model.pk), form_b)

    assert response.status_code == 200
    errors = response.context["adminform"].form.non_field_errors()
    assert any("changed by someone else" in error for error in errors)
    assert model.latest_price_version() == a_version
    assert model.price_in_force().output_price_per_million == Decimal("0.90")


def test_the_service_refuses_prices_read_from_a_version_that_is_no_longer_the_latest(world: World):
    model = world.acme.catalog_model
    read_from = model.latest_price_version()
    model_price_set(model=model, prices={"output_price_per_million": Decimal("0.90")}, source="admin A")

    with pytest.raises(ValidationError, match="changed by someone else"):
        model_price_set(
            model=model,
            prices={"input_price_per_million": Decimal("0.20"), "output_price_per_million": Decimal("0.60")},
            source="admin B",
            expected_latest=read_from.pk,
        )

    assert model.price_in_force().output_price_per_million == Decimal("0.90")


def test_a_version_scheduled_while_the_form_is_saved_answers_a_form_error(superuser_client, world: World):
    """A schedules a version after B's form passed its checks but before B's prices are written (B's model row is
    saved first): the service refuses B's save, and B sees why on the form instead of a server error."""
    model = world.acme.catalog_model

    def admin_a_schedules(sender, instance, **kwargs):
        if instance.pk == model.pk:
            schedule_input_price(model, "0.12")

    post_save.connect(admin_a_schedules, sender=Model, dispatch_uid="admin_a_schedules")
    try:
        response = superuser_client.post(
            admin_url("routing_model", "change", model.pk),
            change_form(world, output_price_per_million="0.90", context_window="64000"),
        )
    finally:
        post_save.disconnect(sender=Model, dispatch_uid="admin_a_schedules")

    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors()
    assert ModelPrice.objects.filter(model=model, output_price_per_million=Decimal("0.90")).count() == 0
    model.refresh_from_db()
    assert model.context_window != 64000
