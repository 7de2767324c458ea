from datetime import UTC, datetime, time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from routing.models import Provider
from routing.price_import import (
    SHOWN_SKIPPED,
    PriceFileError,
    price_file_entries,
    price_import_apply,
    price_import_plan,
)
from tenants.audit import audit_actor


def _moment(text: str):
    """An ISO 8601 time (UTC when it names no offset) or day (its midnight, UTC)."""
    try:
        moment = parse_datetime(text)
        if moment is None and (day := parse_date(text)) is not None:
            moment = datetime.combine(day, time.min)
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(f"--effective-from {text!r} is not an ISO 8601 date or time")
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def _price(value) -> str:
    return "—" if value is None else f"{value.normalize():f}"


class Command(BaseCommand):
    help = (
        "Add versions of model prices from a CSV or JSON file (ours, or LiteLLM's "
        "model_prices_and_context_window.json), taking effect at --effective-from (default now), after every version "
        "already saved. Prices equal to a model's latest version add no version but confirm them (their age starts "
        "again); a bad file changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--effective-from", metavar="ISO-8601", help="when the prices take effect; default now")
        parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
        parser.add_argument(
            "--strip-prefix",
            action="append",
            default=[],
            metavar="PREFIX",
            help="match a file's PREFIXname to the catalog's name (e.g. anthropic/); repeatable",
        )
        parser.add_argument(
            "--litellm-provider", default="", metavar="NAME", help="only LiteLLM entries of this litellm_provider"
        )
        parser.add_argument(
            "--create", action="store_true", help="create the models the catalog lacks (needs --provider)"
        )
        parser.add_argument("--provider", default="", help="the catalog provider of models created with --create")

    def handle(self, *args, file, effective_from, dry_run, strip_prefix, litellm_provider, create, provider, **options):
        # Without --effective-from each version takes effect when it is written, not when the command started: the
        # file is read and checked in between, and a version must never start before it exists.
        moment = _moment(effective_from) if effective_from else None
        if moment is not None and moment < timezone.now():
            raise CommandError(
                f"--effective-from {moment.isoformat()} is in the past: requests already answered keep the prices "
                "they were charged at, so prices take effect now or later"
            )
        catalog_provider = None
        if create:
            catalog_provider = Provider.objects.filter(name=provider).first() if provider else None
            if catalog_provider is None:
                raise CommandError("--create needs --provider, the name of a provider in the catalog")
        try:
            entries, not_per_token = price_file_entries(file)
            plan = price_import_plan(
                entries,
                effective_from=moment,
                strip_prefixes=strip_prefix,
                litellm_provider=litellm_provider,
                create=create,
                provider=catalog_provider,
            )
        except PriceFileError as exc:
            raise CommandError(f"{exc}\nNothing was changed.") from exc

        for change in plan.changes:
            self.stdout.write(f"{change.model}  {change.field}: {_price(change.old)} → {_price(change.new)}")
        self._report_left_out(plan, not_per_token, verbosity=options["verbosity"])
        summary = (
            f"{len(plan.updates)} model(s) with new prices, {len(plan.creations)} to create, "
            f"{len(plan.unchanged)} unchanged; effective {moment.isoformat(timespec='seconds') if moment else 'now'}"
        )
        if dry_run:
            self.stdout.write(f"Dry run: {summary}. Nothing was changed.")
            return
        try:
            with audit_actor(name="manage.py prices_import"):
                added = price_import_apply(plan=plan, source=f"prices_import {file.name}", provider=catalog_provider)
        except PriceFileError as exc:
            raise CommandError(f"{exc}\nNothing was changed.") from exc
        confirmed = f", the prices of {len(plan.unchanged)} confirmed" if plan.unchanged else ""
        self.stdout.write(f"{summary}: {added} price version(s) added{confirmed}.")

    def _report_left_out(self, plan, not_per_token: list[str], *, verbosity: int) -> None:
        for title, names in (
            ("skipped, no catalog model of that name (--create adds them)", plan.skipped),
            ("ignored, not priced per input and output token", not_per_token),
            ("ignored, another entry prices the same model", plan.ignored),
        ):
            if not names:
                continue
            shown = names if verbosity > 1 else names[:SHOWN_SKIPPED]
            more = f" and {len(names) - len(shown)} more (-v 2 lists them)" if len(shown) < len(names) else ""
            self.stdout.write(f"{len(names)} {title}: {', '.join(shown)}{more}")
