"""Monthly statement of a tenant: what each team and model cost, what each lever saved, how budgets were used; and
an end customer's statement: every ledger row of one customer over a range of days, with their totals.

Read straight from the ledger (one grouped query per month), so the statement equals the ledger exactly;
money keeps the ledger's 10 places, with a cents column rounded half to even for reading. Its lines, totals and
savings are product usage; the shadow evaluations' calls are their own `evaluation_spend` line, and are never on an
end customer's statement (the tenant checks its own levers; its customers did not ask for it).
"""

import calendar
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import chain

from django.db.models import QuerySet

from billing.finance.csv_writer import FormulaSafeWriter
from billing.finance.dashboard import BudgetUsage, budget_usage
from billing.finance.exports import FIRST_DAY, LAST_DAY, ExportParams, csv_chunks, request_rows
from billing.ledger.columns import NO_SERVED_MODEL, REQUEST_COLUMNS
from billing.ledger.costs import ZERO_USD, format_cents, format_cost
from billing.ledger.selectors import ledger_between, tenant_days_bounds, tenant_zone
from billing.ledger.totals import SAVINGS_LEVERS, LedgerTotals, ledger_aggregates
from billing.models import PRODUCT_ROWS, UsageRecord
from billing.quality.selectors import evaluation_spend_usd
from tenants.models import Tenant

STATEMENT_COLUMNS = ("section", "team", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")
LINE_TOTALS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")


@dataclass(slots=True, kw_only=True)
class StatementLine(LedgerTotals):
    team: str
    model: str


@dataclass(frozen=True, slots=True)
class Statement:
    tenant: Tenant
    month: date
    lines: list[StatementLine]
    savings: dict[str, Decimal]
    budgets: list[BudgetUsage]
    evaluation_spend_usd: Decimal = ZERO_USD

    @property
    def period_end(self) -> date:
        return self.month.replace(day=calendar.monthrange(self.month.year, self.month.month)[1])

    @property
    def total_usd(self) -> Decimal:
        return sum((line.cost_usd for line in self.lines), ZERO_USD)

    @property
    def total_requests(self) -> int:
        return sum(line.requests for line in self.lines)

    def _totals_by(self, attribute: str) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for line in self.lines:
            key = getattr(line, attribute)
            totals[key] = totals.get(key, ZERO_USD) + line.cost_usd
        return dict(sorted(totals.items()))

    @property
    def by_team(self) -> dict[str, Decimal]:
        return self._totals_by("team")

    @property
    def by_model(self) -> dict[str, Decimal]:
        return self._totals_by("model")


def month_start(value: str | date) -> date:
    """The first day of a month given as 2025-03 or any date in it, from 1970-01 to 9998-12 (as exports take days);
    ValueError for anything else."""
    try:
        if isinstance(value, date):
            first = date(value.year, value.month, 1)
        else:
            year, month = value.split("-")[:2]
            first = date(int(year), int(month), 1)
    except OverflowError as error:  # a year past what a C long holds
        raise ValueError(str(error)) from None
    if not FIRST_DAY <= first <= LAST_DAY:
        raise ValueError(f"a month from {FIRST_DAY:%Y-%m} to {LAST_DAY:%Y-%m}, not {first:%Y-%m}")
    return first


def statement_build(*, tenant: Tenant, month: date) -> Statement:
    month = month_start(month)
    last = month.replace(day=calendar.monthrange(month.year, month.month)[1])
    ledger = ledger_between(tenant=tenant, since=month, until=last).filter(PRODUCT_ROWS)
    rows = (
        ledger.values("team__slug", "served_model")
        .annotate(**ledger_aggregates(*LINE_TOTALS))
        .order_by("team__slug", "served_model")
    )
    lines = [
        StatementLine(team=row.pop("team__slug"), model=row.pop("served_model") or NO_SERVED_MODEL, **row)
        for row in rows
    ]
    saved = ledger.aggregate(**ledger_aggregates(*(f"saved_{lever}_usd" for lever in SAVINGS_LEVERS)))
    return Statement(
        tenant=tenant,
        month=month,
        lines=lines,
        savings=LedgerTotals.of(saved).savings_by_lever,
        budgets=budget_usage(tenant=tenant, since=month, until=last),
        evaluation_spend_usd=evaluation_spend_usd(tenant=tenant, since=month, until=last),
    )


def _money_line(section: str, amount: Decimal, *, team: str = "", model: str = "", requests: int | str = "") -> list:
    """A subtotal, saving or budget line: its section, what it names, and its money in STATEMENT_COLUMNS' places."""
    return [section, team, model, requests, "", "", "", format_cost(amount), format_cents(amount)]


def statement_csv(statement: Statement) -> str:
    """The statement as one CSV: a `section` column tells detail lines, subtotals, savings and budgets apart."""
    buffer = io.StringIO()
    writer = FormulaSafeWriter(buffer)
    writer.writerow(["tenant", statement.tenant.slug, "month", statement.month.strftime("%Y-%m")])
    writer.writerow([*STATEMENT_COLUMNS, "cost_usd_rounded"])
    for line in statement.lines:
        writer.writerow(
            [
                "line",
                line.team,
                line.model,
                line.requests,
                line.errors,
                line.prompt_tokens,
                line.completion_tokens,
                format_cost(line.cost_usd),
                format_cents(line.cost_usd),
            ]
        )
    for team, cost in statement.by_team.items():
        writer.writerow(_money_line("team_total", cost, team=team))
    for model, cost in statement.by_model.items():
        writer.writerow(_money_line("model_total", cost, model=model))
    writer.writerow(_money_line("total", statement.total_usd, requests=statement.total_requests))
    for lever, saved in statement.savings.items():
        writer.writerow(_money_line(f"saved_{lever}", saved))
    writer.writerow(_money_line("evaluation_spend", statement.evaluation_spend_usd))
    for budget in statement.budgets:
        writer.writerow(_money_line("budget_spent", budget.spent_usd, team=budget.name))
        writer.writerow(_money_line("budget_limit", budget.limit_usd, team=budget.name))
    return buffer.getvalue()


# How long after a month ends in a tenant's time zone its statement is final: the drainer lands a request's ledger
# row seconds after it ends, and an hour leaves room for a drainer that was restarting.
STATEMENT_SETTLE = timedelta(hours=1)


def statement_month_final(*, tenant: Tenant, month: date, now: datetime) -> bool:
    """Whether the month has ended in the tenant's time zone, STATEMENT_SETTLE ago: before that its statement would
    miss the month's last hours (the month of a tenant west of UTC ends hours after UTC's)."""
    first = month_start(month)
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    _, end = tenant_days_bounds(tenant=tenant, since=first, until=last)
    return now >= end + STATEMENT_SETTLE


def statement_push_to_s3(*, tenant: Tenant, month: date, bucket: str, client=None) -> str:
    """Upload the month's statement CSV to s3://bucket/statements/<tenant>/<YYYY-MM>.csv; returns the key."""
    import boto3

    client = client or boto3.client("s3")
    key = f"statements/{tenant.slug}/{month_start(month):%Y-%m}.csv"
    body = statement_csv(statement_build(tenant=tenant, month=month)).encode()
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/csv; charset=utf-8")
    return key


# The totals a customer's statement adds up, and the request columns its total line fills (the rest stay empty).
CUSTOMER_TOTALS = ("requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd")
CUSTOMER_TOTAL_CELLS = {
    "prompt_tokens": lambda totals: totals.prompt_tokens,
    "cached_tokens": lambda totals: totals.cached_tokens,
    "completion_tokens": lambda totals: totals.completion_tokens,
    "cost_usd": lambda totals: format_cost(totals.cost_usd),
    "cost_usd_rounded": lambda totals: format_cents(totals.cost_usd),
}


@dataclass(frozen=True, slots=True)
class CustomerStatement:
    tenant: Tenant
    customer: str
    params: ExportParams
    totals: LedgerTotals

    @property
    def filename(self) -> str:
        return f"statement-{self.tenant.slug}-customer-{self.params.since}-{self.params.until}.csv"

    def records(self) -> QuerySet[UsageRecord]:
        return _customer_records(tenant=self.tenant, customer=self.customer, params=self.params)


def _customer_records(*, tenant: Tenant, customer: str, params: ExportParams) -> QuerySet[UsageRecord]:
    """The customer's ledger rows in the range: the tenant's only, whatever the customer's id."""
    return ledger_between(tenant=tenant, since=params.since, until=params.until).filter(PRODUCT_ROWS, customer=customer)


def customer_statement_build(*, tenant: Tenant, customer: str, params: ExportParams) -> CustomerStatement:
    """One end customer's statement over the days of `params` (tenant time zone, both inclusive); its totals are
    the exact sums of the rows it lists (one aggregate query, the same rows)."""
    if not customer:
        raise ValueError("a customer statement names its customer")
    records = _customer_records(tenant=tenant, customer=customer, params=params)
    totals = LedgerTotals.of(records.aggregate(**ledger_aggregates(*CUSTOMER_TOTALS)))
    return CustomerStatement(tenant=tenant, customer=customer, params=params, totals=totals)


def customer_statement_chunks(statement: CustomerStatement) -> Iterator[bytes]:
    """The statement as CSV: a first line naming the tenant, customer, days and totals; then the ledger's request
    columns after a `section` column, one `request` line per ledger row (oldest first, the calls made for a request
    included), and a `total` line with the sums of the token and cost columns (cost at the ledger's 10 places; its
    rounded cell is the total rounded, not a sum of rounded cells)."""
    totals = statement.totals
    first_line = [
        "tenant", statement.tenant.slug, "customer", statement.customer,
        "since", statement.params.since.isoformat(), "until", statement.params.until.isoformat(),
        "time_zone", tenant_zone(tenant=statement.tenant).key, "requests", totals.requests, "errors", totals.errors,
        "cost_usd", format_cost(totals.cost_usd),
    ]  # fmt: skip
    header = ["section", *(column.name for column in REQUEST_COLUMNS)]
    total = ["total", *(CUSTOMER_TOTAL_CELLS.get(column.name, lambda _: "")(totals) for column in REQUEST_COLUMNS)]
    rows = (["request", *row] for row in request_rows(statement.records(), zone=tenant_zone(tenant=statement.tenant)))
    return csv_chunks(first_line, chain([header], rows, [total]))
