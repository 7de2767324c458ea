from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

from django.db.models import QuerySet

from billing.ledger.columns import GROUPINGS, grouping_choices
from billing.ledger.totals import LedgerTotals, ledger_aggregates
from billing.models import PRODUCT_ROWS, UsageRecord
from tenants.models import Tenant
from tenants.time_zones import tenant_zone_or_utc

TOTAL_LABEL = "TOTAL"


# The groupings of usage_summary (manage.py usage_report).
UsageGroupBy = grouping_choices("UsageGroupBy", ("team", "model", "key", "day", "policy", "customer"))


@dataclass(slots=True, kw_only=True)
class UsageRow(LedgerTotals):
    group: str

    @property
    def routed_to_large_percent(self) -> Decimal:
        """Share of the group's requests that routing sent to a large model, in percent with one decimal."""
        if not self.requests:
            return Decimal("0.0")
        return (Decimal(100) * self.routed_to_large / self.requests).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)


def tenant_zone(*, tenant: Tenant) -> ZoneInfo:
    """The tenant's time zone; UTC for a bad stored name, which must not break pages and jobs of every tenant."""
    return tenant_zone_or_utc(tenant.time_zone)


def tenant_days_bounds(*, tenant: Tenant, since: date, until: date) -> tuple[datetime, datetime]:
    """The start of `since` and the start of the day after `until`, in the tenant's time zone."""
    zone = tenant_zone(tenant=tenant)
    return datetime.combine(since, time.min, tzinfo=zone), datetime.combine(
        until + timedelta(days=1), time.min, tzinfo=zone
    )


def ledger_between(*, tenant: Tenant, since: date, until: date) -> QuerySet[UsageRecord]:
    """The tenant's ledger from the start of `since` to the end of `until`, both days in the tenant's time zone."""
    start, end = tenant_days_bounds(tenant=tenant, since=since, until=until)
    return UsageRecord.objects.for_tenant(tenant).filter(created_at__gte=start, created_at__lt=end)


USAGE_ROW_TOTALS = (
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "routed_to_large",
)


def usage_summary(
    *, tenant: Tenant, since: date, until: date, group_by: UsageGroupBy, customer: str = ""
) -> list[UsageRow]:
    """The tenant's product usage (every row but shadow evaluation's) from the start of `since` to the end of
    `until`, both days in the tenant's time zone; with `customer`, that end customer's rows only."""
    grouping = GROUPINGS[UsageGroupBy(group_by)]
    # Product usage: shadow evaluation's calls are the tenant's evaluation spend, reported on their own.
    records = ledger_between(tenant=tenant, since=since, until=until).filter(PRODUCT_ROWS)
    if customer:
        records = records.filter(customer=customer)
    groups = (
        records.annotate(group_key=grouping.expression(tenant_zone(tenant=tenant)))
        .values("group_key")
        .annotate(**ledger_aggregates(*USAGE_ROW_TOTALS))
        .order_by("group_key")
    )
    return [UsageRow(group=grouping.label(group.pop("group_key")), **group) for group in groups]


def usage_total(*, rows: list[UsageRow]) -> UsageRow:
    total = UsageRow(group=TOTAL_LABEL)
    for row in rows:
        total.add(row)
    return total
