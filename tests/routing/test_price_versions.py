"""routing.prices: a new version follows every version of its model, so no price anybody chose is lost."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from routing.models import ModelPrice
from routing.prices import model_price_set
from tests.factories import ModelFactory, ProviderFactory


@pytest.fixture
def model(db):
    return ModelFactory(
        name="priced",
        input_price_per_million=Decimal("1"),
        cached_input_price_per_million=Decimal("0.5"),
        output_price_per_million=Decimal("2"),
    )


def charged(model, at) -> tuple[Decimal, Decimal]:
    version = model.price_in_force(at)
    return version.input_price_per_million, version.output_price_per_million


def test_a_change_now_is_refused_while_a_version_is_scheduled_and_nothing_is_undone(model):
    tomorrow = timezone.now() + timedelta(days=1)
    scheduled = model_price_set(
        model=model, prices={"input_price_per_million": Decimal("0.9")}, effective_from=tomorrow, source="import"
    )

    with pytest.raises(ValidationError) as refused:
        model_price_set(model=model, prices={"output_price_per_million": Decimal("3")}, source="admin")

    message = " ".join(refused.value.messages)
    assert "scheduled to take effect at " + scheduled.effective_from.isoformat(timespec="seconds") in message
    assert "(from import)" in message
    assert ModelPrice.objects.filter(model=model).count() == 2
    assert charged(model, timezone.now()) == (Decimal("1"), Decimal("2"))
    assert charged(model, tomorrow + timedelta(hours=1)) == (Decimal("0.9"), Decimal("2"))


def test_a_version_before_or_at_a_scheduled_one_is_refused(model):
    tomorrow = timezone.now() + timedelta(days=1)
    model_price_set(
        model=model, prices={"input_price_per_million": Decimal("0.9")}, effective_from=tomorrow, source="import"
    )

    for moment in (tomorrow - timedelta(hours=1), tomorrow):
        with pytest.raises(ValidationError, match="scheduled to take effect"):
            model_price_set(
                model=model, prices={"output_price_per_million": Decimal("3")}, effective_from=moment, source="admin"
            )

    assert ModelPrice.objects.filter(model=model).count() == 2


def test_a_version_after_a_scheduled_one_carries_its_change(model):
    tomorrow = timezone.now() + timedelta(days=1)
    model_price_set(
        model=model, prices={"input_price_per_million": Decimal("0.9")}, effective_from=tomorrow, source="import"
    )

    model_price_set(
        model=model,
        prices={"output_price_per_million": Decimal("3")},
        effective_from=tomorrow + timedelta(days=1),
        source="admin",
    )

    assert charged(model, timezone.now()) == (Decimal("1"), Decimal("2"))
    assert charged(model, tomorrow + timedelta(hours=1)) == (Decimal("0.9"), Decimal("2"))
    assert charged(model, tomorrow + timedelta(days=2)) == (Decimal("0.9"), Decimal("3"))


def test_prices_equal_to_the_scheduled_version_add_none(model):
    tomorrow = timezone.now() + timedelta(days=1)
    model_price_set(
        model=model, prices={"input_price_per_million": Decimal("0.9")}, effective_from=tomorrow, source="import"
    )

    assert model_price_set(model=model, prices={"input_price_per_million": Decimal("0.90")}, source="admin") is None
    assert ModelPrice.objects.filter(model=model).count() == 2


def test_a_claude_models_blank_cache_write_price_is_saved_as_anthropics_multiple(db):
    anthropic = ProviderFactory(kind="anthropic")
    claude = ModelFactory(name="claude", provider=anthropic, upstream_name="claude-sonnet-4-20250514")
    gpt = ModelFactory(name="gpt", upstream_name="gpt-4o-mini")
    admin_save = {
        "input_price_per_million": Decimal("3"),
        "cached_input_price_per_million": Decimal("0.3"),
        "output_price_per_million": Decimal("15"),
        "cache_write_price_per_million": None,
    }

    model_price_set(model=claude, prices=admin_save, source="admin")
    model_price_set(model=gpt, prices=admin_save, source="admin")

    assert claude.price_in_force().cache_write_price_per_million == Decimal("3.75")
    # Only a blank is filled in: the cached-input price the admin gave stands.
    assert claude.price_in_force().cached_input_price_per_million == Decimal("0.3")
    assert gpt.price_in_force().cache_write_price_per_million is None
