import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from billing.finance.whatif import WHATIF_MAX_DAYS, WhatIfLine, WhatIfRefused, WhatIfReport, whatif_replay
from billing.ledger.costs import format_money, format_money_change
from tenants.selectors import tenant_by_slug

CURRENT_DRAFT = "current"
DEFAULT_DAYS = 30
COLUMNS = ("live requests", "draft requests", "live cost", "draft cost", "difference", "%")


class Command(BaseCommand):
    help = (
        "What a draft routing policy would have done: the tenant's requests of the last N days routed under its live "
        "version and under the draft, priced at today's prices, by rule and in total. Nothing is published."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", dest="tenant_slug", required=True, metavar="SLUG")
        parser.add_argument(
            "--days", type=int, default=DEFAULT_DAYS, help=f"1 to {WHATIF_MAX_DAYS}; default {DEFAULT_DAYS}."
        )
        parser.add_argument(
            "--draft",
            default=CURRENT_DRAFT,
            metavar="current|FILE.json",
            help="`current`: the draft in the admin (default); or a policy document in a JSON file, in the shape "
            "of a published version (docs/routing-whatif.md).",
        )
        parser.add_argument("--format", dest="output_format", default="table", choices=["table", "json"])

    def handle(self, *args, tenant_slug, days, draft, output_format, **options):
        tenant = tenant_by_slug(slug=tenant_slug)
        if tenant is None:
            raise CommandError(f"no tenant with slug '{tenant_slug}'")
        document, label = (None, "the current draft") if draft == CURRENT_DRAFT else (_read_draft(draft), draft)
        try:
            report = whatif_replay(tenant=tenant, days=days, draft=document, draft_label=label)
        except WhatIfRefused as refused:
            raise CommandError("cannot replay: " + "; ".join(refused.reasons)) from None
        if output_format == "json":
            self.stdout.write(json.dumps(report.as_json(), indent=2))
        else:
            self.stdout.write(whatif_text(report))


def _read_draft(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise CommandError(f"cannot read the draft file {path}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CommandError(f"the draft file {path} is not JSON: {error}") from None


def _cells(line: WhatIfLine) -> list[str]:
    pct = line.difference_pct
    return [
        line.label,
        f"{line.live_requests:,}",
        f"{line.draft_requests:,}",
        format_money(line.live_cost_usd),
        format_money(line.draft_cost_usd),
        format_money_change(line.difference_usd),
        "—" if pct is None else f"{'+' if pct > 0 else ''}{pct}%",
        line.quality,
    ]


def _table(title: str, lines: list[WhatIfLine], total: WhatIfLine | None, quality: bool) -> list[str]:
    header = [title, *COLUMNS, *(["expected quality change"] if quality else [])]
    rows = [header, *(_cells(line)[: len(header)] for line in lines)]
    if total is not None:
        rows.append(_cells(total)[: len(header)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    text = []
    for row in rows:
        numbers = [cell.rjust(width) for cell, width in zip(row[1:7], widths[1:7], strict=True)]
        text.append("  ".join([row[0].ljust(widths[0]), *numbers, *row[7:]]).rstrip())
    return text


def whatif_text(report: WhatIfReport) -> str:
    live = f"live v{report.live_version}" if report.live_version else "no live version (routed without a policy)"
    lines = [
        f"What if tenant {report.tenant} published {report.draft}? Nothing is published by this command.",
        f"Replayed {report.replayed:,} requests of the last {report.days} days "
        f"({report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC) under {live} and under the draft:",
        f"  {report.from_payloads:,} from their payload log, {report.from_ledger:,} from ledger features only.",
        "  A ledger-only replay cannot see: " + "; ".join(report.ledger_blind) + ".",
        "  A rule that reads what is not known leaves its requests undecided, set aside from both totals.",
        "  Priced at each model's prices in force now, on the tokens each request used; costs rounded to cents "
        "(the JSON output has the ledger's 10 places).",
        "",
        *_table("rule", list(report.rules), report.total, quality=True),
        "",
        *_table("model", list(report.models), None, quality=False),
        "",
    ]
    if report.undecided_requests:
        lines.append(f"Undecided, under one version or both: {report.undecided_requests:,} requests")
        width = max(len(item.reason) for item in report.undecided)
        lines += [f"  {item.version:<5}  {item.reason:<{width}}  {item.requests:>8,}" for item in report.undecided]
    else:
        lines.append("Undecided: none; every replayed request is in the totals.")
    lines.append(
        f"Cost the ledger recorded for the {report.replayed:,} replayed requests, at the prices they were charged: "
        f"{format_money(report.recorded_cost_usd)}"
    )
    difference = report.total.difference_usd
    pct = report.total.difference_pct
    lines.append(
        f"Difference, draft minus live, over the {report.decided_requests:,} decided requests: "
        f"{format_money_change(difference)}" + ("" if pct is None else f" ({'+' if pct > 0 else ''}{pct}%)")
    )
    lines.append(quality_text(report))
    return "\n".join(lines)


def quality_text(report: WhatIfReport) -> str:
    """The expected change in quality, from the routing lever's shadow results of the same days."""
    quality = report.expected_quality
    if not quality.moved:
        return "Expected quality change: none; the draft serves each decided request with the model live does."
    if not quality.estimated:
        return (
            f"Expected quality change: unknown; no shadow results for the {quality.moved:,} requests that change model "
            "(turn shadow evaluation on in the tenant's evaluation settings)."
        )
    overall = report.quality_change_overall
    return "\n".join(
        [
            f"Expected quality change, draft minus live (answers agreeing with the large model's, from the routing "
            f"shadow results of the same days): {quality.describe()}; over all {report.decided_requests:,} decided "
            f"requests {overall * 100:+.1f} pts. From:",
            *(f"  {source}" for source in quality.sources),
        ]
    )
