"""Versioned model prices: the one way a price changes (a new version), and the diff a change would make.

A version is never edited: the ledger row of every request names the version it was priced at, so a price change
(from the admin or `manage.py prices_import`) is a new version with the moment it takes effect, and the past keeps
the prices it was charged at.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from routing.models import PRICE_FIELD, PRICE_FIELDS, Model, ModelPrice
from routing.providers.prompt_cache import CACHE_READ_MULTIPLIER, CACHE_WRITE_MULTIPLIER, bills_cache_as_anthropic

# What a version holds, by ModelPrice field name; a field left out keeps the value of the version before it.
Prices = dict[str, Decimal | None]
PRICE_QUANTUM = Decimal(1).scaleb(-PRICE_FIELD["decimal_places"])


@dataclass(frozen=True, slots=True)
class PriceChange:
    """One field a new version would change: ``old`` is None for a model's first version (or a blank price)."""

    model: str
    field: str
    old: Decimal | None
    new: Decimal | None


def price_changes(*, model: Model | None, name: str, prices: Prices) -> list[PriceChange]:
    """What a new version of ``prices`` would change against the model's latest version, the one it follows (every
    field, for a model that has none yet or does not exist: ``model`` None)."""
    before = model.latest_price_version() if model is not None and model.pk else None
    changes = []
    for field in PRICE_FIELDS:
        if field not in prices:
            continue
        old = getattr(before, field) if before is not None else None
        if before is None or old != prices[field]:
            changes.append(PriceChange(model=name, field=field, old=old, new=prices[field]))
    return changes


def cache_price_defaults(prices: Prices, *, kind: str, upstream_name: str) -> Prices:
    """The prices, with the cache prices they leave out or blank, for a model whose provider bills its prompt cache as
    Anthropic does (Claude, on Anthropic's API or Bedrock: routing.providers.prompt_cache), as Anthropic's multiples of
    the input price they give: writes 1.25x, reads 0.1x (rounded to the catalog's six places). Other models' prices,
    and prices without an input price, are returned as they are."""
    input_price = prices.get("input_price_per_million")
    if input_price is None or not bills_cache_as_anthropic(kind=kind, upstream_name=upstream_name):
        return prices
    defaults = {
        "cache_write_price_per_million": input_price * CACHE_WRITE_MULTIPLIER,
        "cached_input_price_per_million": input_price * CACHE_READ_MULTIPLIER,
    }
    return {
        **prices,
        **{
            name: value.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN)
            for name, value in defaults.items()
            if prices.get(name) is None
        },
    }


def price_field_errors(prices: Prices) -> list[str]:
    """Why these prices cannot be stored (too many digits or places, negative); empty when they can. A price is
    judged by its value: an import's 3.000000 is 3."""
    errors = []
    for name, value in prices.items():
        model_field = ModelPrice._meta.get_field(name)
        try:
            model_field.clean(value.normalize() if isinstance(value, Decimal) else value, None)
        except ValidationError as exc:
            errors += [f"{model_field.verbose_name} {value}: {message}" for message in exc.messages]
    return errors


def price_version_errors(*, model: Model, effective_from: datetime | None = None) -> list[str]:
    """Why a new version of the model's prices cannot take effect at ``effective_from`` (default now); empty when it
    can.

    A new version follows every version the model has: before the version in force it would reprice the past, and
    before a version scheduled ahead it would be undone when that one takes effect, with the prices it carries.
    """
    latest = model.latest_price_version()
    moment = effective_from or timezone.now()
    if latest is None or moment > latest.effective_from:
        return []
    taken = latest.effective_from.isoformat(timespec="seconds")
    if latest.effective_from > timezone.now():
        return [
            f"{model.name} has prices scheduled to take effect at {taken} (from {latest.source}): a new version must "
            "take effect after that, or the scheduled version would undo its change when it takes effect. Give a "
            "later time, or wait for the scheduled prices to take effect."
        ]
    return [
        f"{model.name}'s prices in force took effect at {taken}: a new version must take effect after that, so the "
        "past keeps the prices it was charged at."
    ]


def price_conflict_errors(*, model: Model, based_on: int | None) -> list[str]:
    """Why prices read from version ``based_on`` (None: from a model with none) cannot be saved over the model's
    latest version; empty when that is still the latest."""
    latest = model.latest_price_version()
    if (latest.pk if latest is not None else None) == based_on:
        return []
    return [
        f"{model.name}'s prices were changed by someone else since you opened this page; reload it to see their "
        "change, then make yours."
    ]


@transaction.atomic
def model_price_set(
    *,
    model: Model,
    prices: Prices,
    source: str,
    actor=None,
    effective_from: datetime | None = None,
    expected_latest: int | None = None,
) -> ModelPrice | None:
    """A new version of the model's prices from ``effective_from`` (default: the moment it is written), the fields
    not in ``prices`` carried over from the latest version, the cache prices of a Claude model left blank beside an
    input price set to Anthropic's multiples of it (``cache_price_defaults``). None, and nothing saved, when it would
    change no price.

    A version takes effect after every version the model has (price_version_errors), so no price anybody chose is
    repriced or undone. ``expected_latest``, the id of the latest version the caller's prices were read from (the
    admin's form), refuses a change made from prices someone else has changed since: it would silently undo theirs.
    """
    # Serializes changes to one model's prices, so two saves cannot both follow the same latest version.
    locked = Model.objects.select_for_update(of=("self",)).select_related("provider").get(pk=model.pk)
    prices = cache_price_defaults(prices, kind=locked.provider.kind, upstream_name=locked.upstream_name)
    # Stamped once the lock is held: a version written now never starts before it was written.
    effective_from = effective_from or timezone.now()
    if not price_changes(model=model, name=model.name, prices=prices):
        return None
    if expected_latest is not None and (errors := price_conflict_errors(model=model, based_on=expected_latest)):
        raise ValidationError(errors)
    if errors := price_version_errors(model=model, effective_from=effective_from):
        raise ValidationError({"effective_from": errors})
    if errors := price_field_errors(prices):
        raise ValidationError(errors)
    before = model.latest_price_version()
    carried = before.prices() if before is not None else {}
    return ModelPrice.objects.create(
        model=model,
        effective_from=effective_from,
        source=source[:200],
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
        **{**carried, **prices},
    )


def model_prices_confirm(*, model: Model) -> Model:
    """Record that the model's prices were checked against the provider's and are still right: their age starts again
    (the audit log keeps who confirmed). No version is added, since no price changed."""
    model.prices_checked_at = timezone.now()
    model.save(update_fields=["prices_checked_at"])
    return model


def price_age_days(
    effective_from: datetime | None, *, checked_at: datetime | None = None, now: datetime | None = None
) -> int | None:
    """Whole days since the prices in force took effect or were last confirmed, whichever is later; None for a model
    with none in force."""
    if effective_from is None:
        return None
    since = max(effective_from, checked_at) if checked_at is not None else effective_from
    return ((now or timezone.now()) - since).days


def price_is_stale(age_days: int | None) -> bool:
    """Older than LLMOPS_PRICE_MAX_AGE_DAYS: worth checking against the provider's price list."""
    return age_days is not None and age_days > settings.LLMOPS_PRICE_MAX_AGE_DAYS
