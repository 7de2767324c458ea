"""Model prices from a file (`manage.py prices_import`): our CSV or JSON, or LiteLLM's public cost map.

The whole file is read and checked before anything is written, and written in one transaction: a bad file changes
nothing. Prices are read as decimals from the file's text, never through float, so a per-token 3e-06 is exactly 3
per million.
"""

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import transaction

from routing.models import PRICE_FIELDS, Model, ModelKind, Provider
from routing.prices import (
    PriceChange,
    Prices,
    cache_price_defaults,
    model_price_set,
    model_prices_confirm,
    price_changes,
    price_field_errors,
    price_version_errors,
)
from routing.services import model_create

ONE_MILLION = Decimal(1_000_000)
# LiteLLM's per-token cost keys, and the price (per million) each becomes.
LITELLM_COSTS = {
    "input_cost_per_token": "input_price_per_million",
    "cache_read_input_token_cost": "cached_input_price_per_million",
    "output_cost_per_token": "output_price_per_million",
    "cache_creation_input_token_cost": "cache_write_price_per_million",
}
# The entry of LiteLLM's file that documents its fields rather than pricing a model.
LITELLM_SAMPLE = "sample_spec"
REQUIRED_PRICES = ("input_price_per_million", "output_price_per_million")
NAME_COLUMN = "model"
SHOWN_SKIPPED = 20


class PriceFileError(Exception):
    """The file cannot be imported as it is; nothing was changed."""


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One model's prices as the file gives them (the fields it names), with LiteLLM's facts when it has them."""

    name: str
    prices: Prices
    litellm_provider: str = ""
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    # What a model created from the entry answers: LiteLLM's `mode` says when it is an embedding model.
    kind: str = ModelKind.CHAT


@dataclass(slots=True)
class ImportPlan:
    """What an import does: the versions it adds (with their diff), the models it creates, what it leaves."""

    # None: each version takes effect when it is written.
    effective_from: datetime | None
    updates: list[tuple[Model, PriceEntry]] = field(default_factory=list)
    creations: list[PriceEntry] = field(default_factory=list)
    changes: list[PriceChange] = field(default_factory=list)
    # Models whose prices equal the file's: the import confirms them (their price age starts again).
    unchanged: list[Model] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _decimal(value, *, where: str) -> Decimal | None:
    """A price from the file: a JSON number read as Decimal, or text; blank is None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise PriceFileError(f"{where}: {value!r} is not a number")
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise PriceFileError(f"{where}: {value!r} is not a number") from None
    if not number.is_finite() or number < 0:
        raise PriceFileError(f"{where}: {value!r} is not a price (a number of zero or more)")
    return number


def _token_count(value) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _litellm_entries(document: dict) -> tuple[list[PriceEntry], list[str]]:
    """LiteLLM's map: model name → {input_cost_per_token, output_cost_per_token, …} in USD per token. Entries
    without both a per-token input and output cost (images, audio by the second, …) are left out, by name."""
    entries, ignored = [], []
    for name, spec in document.items():
        if name == LITELLM_SAMPLE:
            continue
        if not isinstance(spec, dict):
            raise PriceFileError(f"{name}: expected an object of costs, got {type(spec).__name__}")
        prices = {}
        for key, price_field in LITELLM_COSTS.items():
            per_token = _decimal(spec.get(key), where=f"{name}.{key}")
            if per_token is not None:
                prices[price_field] = per_token * ONE_MILLION
        if not all(required in prices for required in REQUIRED_PRICES):
            ignored.append(name)
            continue
        entries.append(
            PriceEntry(
                name=name,
                prices=prices,
                litellm_provider=str(spec.get("litellm_provider") or ""),
                max_input_tokens=_token_count(spec.get("max_input_tokens")),
                max_output_tokens=_token_count(spec.get("max_output_tokens")),
                kind=ModelKind.EMBEDDING if spec.get("mode") == "embedding" else ModelKind.CHAT,
            )
        )
    return entries, ignored


def _row_entry(row: dict, *, where: str) -> PriceEntry:
    """A row of our own shape: `model` and prices per million by ModelPrice field name; a blank price keeps the
    current one (the input price, for a cached-input price of a model created), except a Claude model's cache prices
    beside an input price (price_import_plan)."""
    unknown = sorted(str(column) for column in set(row) - {NAME_COLUMN, *PRICE_FIELDS})
    if unknown:
        raise PriceFileError(
            f"{where}: unknown column(s) {', '.join(unknown)}; expected {NAME_COLUMN} and {', '.join(PRICE_FIELDS)}"
        )
    name = str(row.get(NAME_COLUMN) or "").strip()
    if not name:
        raise PriceFileError(f"{where}: no model name (column {NAME_COLUMN})")
    prices = {}
    for price_field in PRICE_FIELDS:
        value = _decimal(row.get(price_field), where=f"{where} ({name}) {price_field}")
        if value is not None:
            prices[price_field] = value
    if not prices:
        raise PriceFileError(f"{where} ({name}): no price")
    return PriceEntry(name=name, prices=prices)


def price_file_entries(path: Path) -> tuple[list[PriceEntry], list[str]]:
    """(entries, names of LiteLLM entries left out as not priced per token) of a `.csv` or `.json` file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"cannot read {path}: {exc}") from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or NAME_COLUMN not in reader.fieldnames:
            raise PriceFileError(f"{path.name}: the first line must name the columns, {NAME_COLUMN} among them")
        try:
            return [_row_entry(row, where=f"line {reader.line_num}") for row in reader], []
        except csv.Error as exc:
            raise PriceFileError(f"{path.name}: not a CSV file ({exc})") from exc
    try:
        # parse_float: a JSON number's text becomes a Decimal as written, never a float first.
        document = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise PriceFileError(f"{path.name}: not valid JSON ({exc})") from exc
    if isinstance(document, list):
        rows = [row if isinstance(row, dict) else {} for row in document]
        return [_row_entry(row, where=f"entry {index}") for index, row in enumerate(rows)], []
    if isinstance(document, dict):
        return _litellm_entries(document)
    raise PriceFileError(f"{path.name}: expected a list of prices or LiteLLM's map of models")


def _catalog_name(name: str, prefixes: Sequence[str]) -> str:
    for prefix in prefixes:
        if prefix and name.startswith(prefix):
            return name[len(prefix) :]
    return name


def price_import_plan(
    entries: list[PriceEntry],
    *,
    effective_from: datetime | None,
    strip_prefixes: Sequence[str] = (),
    litellm_provider: str = "",
    create: bool = False,
    provider: Provider | None = None,
) -> ImportPlan:
    """What importing ``entries`` would do, reading the catalog and writing nothing.

    An entry names a catalog model by its name, or by its name after one of ``strip_prefixes`` (LiteLLM's
    `anthropic/claude-…` for the catalog's `claude-…`); the exact name wins. Entries of no catalog model are skipped,
    or with ``create`` become new models of ``provider``. A Claude model's cache prices the entry leaves out are
    Anthropic's multiples of the input price it gives (routing.prices.cache_price_defaults).
    """
    plan = ImportPlan(effective_from=effective_from)
    if litellm_provider:
        entries = [entry for entry in entries if entry.litellm_provider == litellm_provider]
    by_model: dict[str, PriceEntry] = {}
    # Exact names first, so a prefixed duplicate never overrides them.
    for entry in sorted(entries, key=lambda entry: _catalog_name(entry.name, strip_prefixes) != entry.name):
        target = _catalog_name(entry.name, strip_prefixes)
        if target in by_model:
            if by_model[target].prices != entry.prices:
                plan.ignored.append(f"{entry.name} (prices {by_model[target].name} as well, which wins)")
            continue
        by_model[target] = entry
    models = {model.name: model for model in Model.objects.filter(name__in=by_model).select_related("provider")}
    errors = []
    for target, entry in sorted(by_model.items()):
        model = models.get(target)
        if model is None and not create:
            plan.skipped.append(entry.name)
            continue
        owner, upstream_name = (model.provider, model.upstream_name) if model is not None else (provider, target)
        if owner is not None:
            defaulted = cache_price_defaults(entry.prices, kind=owner.kind, upstream_name=upstream_name)
            entry = replace(entry, prices=defaulted)
        errors += [f"{entry.name}: {error}" for error in price_field_errors(entry.prices)]
        changes = price_changes(model=model, name=target, prices=entry.prices)
        if model is None:
            if missing := [name for name in REQUIRED_PRICES if name not in entry.prices]:
                errors.append(f"{entry.name}: a model created needs its {' and '.join(missing)}")
            plan.creations.append(replace(entry, name=target))
        elif not changes:
            plan.unchanged.append(model)
            continue
        else:
            errors += price_version_errors(model=model, effective_from=effective_from)
            plan.updates.append((model, entry))
        plan.changes += changes
    if errors:
        raise PriceFileError("\n".join(errors))
    return plan


@transaction.atomic
def price_import_apply(*, plan: ImportPlan, source: str, provider: Provider | None = None, actor=None) -> int:
    """Write the plan: a version per model whose prices change, the models to create on ``provider``, and the
    confirmation of the prices the file found unchanged. All or nothing. Returns the number of versions added."""
    if plan.creations and provider is None:
        raise PriceFileError("models to create need a provider (--provider)")
    added = 0
    for model in plan.unchanged:
        model_prices_confirm(model=model)
    try:
        for model, entry in plan.updates:
            added += (
                model_price_set(
                    model=model, prices=entry.prices, effective_from=plan.effective_from, source=source, actor=actor
                )
                is not None
            )
        for entry in plan.creations:
            prices = entry.prices
            model_create(
                name=entry.name,
                provider=provider,
                upstream_name=entry.name,
                input_price_per_million=prices["input_price_per_million"],
                cached_input_price_per_million=prices.get(
                    "cached_input_price_per_million", prices["input_price_per_million"]
                ),
                output_price_per_million=prices["output_price_per_million"],
                cache_write_price_per_million=prices.get("cache_write_price_per_million"),
                context_window=entry.max_input_tokens or Model._meta.get_field("context_window").default,
                max_output_tokens=entry.max_output_tokens,
                kind=entry.kind,
                actor=actor,
                price_source=source,
                price_effective_from=plan.effective_from,
            )
            added += 1
    except ValidationError as exc:
        raise PriceFileError("; ".join(exc.messages)) from exc
    return added
