from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

from django.db import models
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDate

from billing.models import REQUEST_ROWS, UsageRecord
from tenants.models import Tenant

NO_SERVED_MODEL = "(none)"
NO_POLICY = "(no policy)"
TOTAL_LABEL = "TOTAL"


class UsageGroupBy(models.TextChoices):
    TEAM = "team", "Team"
    MODEL = "model", "Served model"
    KEY = "key", "API key prefix"
    DAY = "day", "Day in the tenant's time zone"
    POLICY = "policy", "Routing policy version"


@dataclass(frozen=True, slots=True)
class UsageRow:
    group: str
    requests: int
    errors: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    routed_to_large: int

    @property
    def routed_to_large_percent(self) -> Decimal:
        """Share of the group's requests that routing sent to a large model, in percent with one decimal."""
        if not self.requests:
            return Decimal("0.0")
        return (Decimal(100) * self.routed_to_large / self.requests).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)


def tenant_zone(*, tenant: Tenant) -> ZoneInfo:
    return ZoneInfo(tenant.time_zone)


def usage_summary(*, tenant: Tenant, since: date, until: date, group_by: UsageGroupBy) -> list[UsageRow]:
    """The tenant's ledger from the start of `since` to the end of `until`, both days in the tenant's time zone."""
    zone = tenant_zone(tenant=tenant)
    group_by = UsageGroupBy(group_by)
    group_expressions = {
        UsageGroupBy.TEAM: F("team__slug"),
        UsageGroupBy.MODEL: F("served_model"),
        UsageGroupBy.KEY: F("api_key__prefix"),
        UsageGroupBy.DAY: TruncDate("created_at", tzinfo=zone),
        UsageGroupBy.POLICY: F("policy_version"),
    }
    groups = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(
            created_at__gte=datetime.combine(since, time.min, tzinfo=zone),
            created_at__lt=datetime.combine(until + timedelta(days=1), time.min, tzinfo=zone),
        )
        .annotate(group_key=group_expressions[group_by])
        .values("group_key")
        .annotate(
            requests=Count("id", filter=REQUEST_ROWS),
            errors=Count("id", filter=REQUEST_ROWS & Q(http_status__gte=400)),
            prompt_tokens=Sum("prompt_tokens"),
            cached_tokens=Sum("cached_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost_usd=Sum("cost_usd"),
            routed_to_large=Count("id", filter=Q(routed_to_large=True)),
        )
        .order_by("group_key")
    )
    return [UsageRow(group=_group_label(group.pop("group_key"), group_by), **group) for group in groups]


def usage_total(*, rows: list[UsageRow]) -> UsageRow:
    return UsageRow(
        group=TOTAL_LABEL,
        requests=sum(row.requests for row in rows),
        errors=sum(row.errors for row in rows),
        prompt_tokens=sum(row.prompt_tokens for row in rows),
        cached_tokens=sum(row.cached_tokens for row in rows),
        completion_tokens=sum(row.completion_tokens for row in rows),
        cost_usd=sum((row.cost_usd for row in rows), Decimal(0)),
        routed_to_large=sum(row.routed_to_large for row in rows),
    )


def _group_label(value: str | date, group_by: UsageGroupBy) -> str:
    if group_by == UsageGroupBy.DAY:
        return value.isoformat()
    if group_by == UsageGroupBy.MODEL:
        return value or NO_SERVED_MODEL
    if group_by == UsageGroupBy.POLICY:
        return f"v{value}" if value is not None else NO_POLICY
    return value
