import argparse
import io
import json
from datetime import date, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.finance.csv_writer import FormulaSafeWriter
from billing.finance.exports import ExportError, export_params_parse
from billing.finance.statements import customer_statement_build, customer_statement_chunks
from billing.ledger.costs import format_cost
from billing.ledger.selectors import USAGE_ROW_TOTALS, UsageGroupBy, UsageRow, tenant_zone, usage_summary, usage_total
from tenants.selectors import tenant_by_slug
from tenants.time_zones import is_known_time_zone

DEFAULT_PERIOD_DAYS = 30
COLUMNS = ["group", *USAGE_ROW_TOTALS, "routed_to_large_percent"]


def parse_date(value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a date in the form YYYY-MM-DD") from None


class Command(BaseCommand):
    help = (
        "Requests, errors, tokens and cost of one tenant, grouped by team, served model, key, day, policy or end "
        "customer; with --customer, of that customer's rows only; with --statement, that customer's statement CSV. "
        f"Dates are days in the tenant's time zone, both inclusive; the default is the last {DEFAULT_PERIOD_DAYS} days."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", dest="tenant_slug", required=True, metavar="SLUG")
        parser.add_argument("--since", type=parse_date, metavar="YYYY-MM-DD")
        parser.add_argument("--until", type=parse_date, metavar="YYYY-MM-DD")
        parser.add_argument("--group-by", choices=UsageGroupBy.values, help="Required unless --statement.")
        parser.add_argument("--customer", default="", metavar="ID", help="Only this end customer's usage.")
        parser.add_argument(
            "--statement",
            action="store_true",
            help="Print the --customer's statement (every ledger row in the days, and their totals) as CSV.",
        )
        parser.add_argument("--format", dest="output_format", default="table", choices=["table", "csv", "json"])

    def handle(self, *args, tenant_slug, since, until, group_by, customer, statement, output_format, **options):
        tenant = tenant_by_slug(slug=tenant_slug)
        if tenant is None:
            raise CommandError(f"no tenant with slug '{tenant_slug}'")
        # Refused rather than read as UTC (as pages do): the report would print UTC days under the bad zone's name.
        if not is_known_time_zone(tenant.time_zone):
            raise CommandError(f"tenant '{tenant.slug}' has an unknown time zone '{tenant.time_zone}'")
        zone = tenant_zone(tenant=tenant)
        until = until or timezone.localdate(timezone=zone)
        since = since or until - timedelta(days=DEFAULT_PERIOD_DAYS - 1)
        if since > until:
            raise CommandError(f"--since {since} is after --until {until}")
        if statement:
            self._write_statement(tenant, customer, since, until)
            return
        if not group_by:
            raise CommandError("--group-by is required (or --statement with --customer)")

        rows = usage_summary(tenant=tenant, since=since, until=until, group_by=group_by, customer=customer)
        total = usage_total(rows=rows)
        if output_format == "json":
            self._write_json(tenant, since, until, group_by, customer, rows, total)
        elif output_format == "csv":
            self._write_csv(group_by, [*rows, total])
        else:
            whose = f"customer {customer!r} of {tenant.slug}" if customer else tenant.slug
            self.stdout.write(f"Usage of {whose} from {since} to {until} ({tenant.time_zone}), by {group_by}")
            self._write_table(group_by, [*rows, total])

    def _write_statement(self, tenant, customer, since, until):
        if not customer:
            raise CommandError("--statement needs --customer")
        try:
            params = export_params_parse(since=since, until=until)
        except ExportError as error:
            raise CommandError(error.message) from None
        chunks = customer_statement_chunks(customer_statement_build(tenant=tenant, customer=customer, params=params))
        for chunk in chunks:
            self.stdout.write(chunk.decode(), ending="")

    def _write_json(self, tenant, since, until, group_by, customer, rows, total):
        report = {
            "tenant": tenant.slug,
            "time_zone": tenant.time_zone,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "group_by": group_by,
            **({"customer": customer} if customer else {}),
            "rows": [_json_row(row) for row in rows],
            "total": _json_row(total),
        }
        self.stdout.write(json.dumps(report, indent=2))

    def _write_csv(self, group_by, rows):
        buffer = io.StringIO()
        writer = FormulaSafeWriter(buffer)
        writer.writerow([group_by, *COLUMNS[1:]])
        writer.writerows(_text_cells(row) for row in rows)
        self.stdout.write(buffer.getvalue(), ending="")

    def _write_table(self, group_by, rows):
        lines = [[group_by, *COLUMNS[1:]], *(_text_cells(row) for row in rows)]
        widths = [max(len(line[column]) for line in lines) for column in range(len(COLUMNS))]
        for label, *numbers in lines:
            padded_numbers = [number.rjust(width) for number, width in zip(numbers, widths[1:], strict=True)]
            self.stdout.write("  ".join([label.ljust(widths[0]), *padded_numbers]))


def _json_row(row: UsageRow) -> dict:
    """The row's COLUMNS: money as a decimal string with the ledger's 10 places, the percentage as a string."""
    values = {name: getattr(row, name) for name in COLUMNS}
    return {
        **values,
        "cost_usd": format_cost(row.cost_usd),
        "routed_to_large_percent": str(row.routed_to_large_percent),
    }


def _text_cells(row: UsageRow) -> list[str]:
    return [str(value) for value in _json_row(row).values()]
