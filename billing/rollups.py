"""Keep the hourly and daily rollups equal to the ledger.

Two ways in, both idempotent (a bucket is always rebuilt whole from the ledger, never incremented):

- `usage_rollups_refresh` folds in ledger rows written since the last run (by ledger id), rebuilding only the
  hours and days they touch. Beat runs it every minute.
- `usage_rollups_rebuild` rebuilds every bucket of a tenant in a time range. Beat runs it nightly over the last two
  days, which picks up rows whose insert committed after a later id had already been folded in; the seed and
  backfills call it directly.

Both take the cursor row's lock, so two rollup writers never interleave a bucket's delete and insert.
"""

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, DecimalField, Max, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDate, TruncHour

from billing.models import REQUEST_ROWS, CacheStatus, RollupCursor, UsageRecord, UsageRollupDaily, UsageRollupHourly
from billing.models.rollups import LATENCY_BUCKET_EDGES_MS
from billing.selectors import tenant_zone
from tenants.models import Tenant

ROLLUP_CURSOR_NAME = "usage"
CACHE_HIT_STATUSES = (CacheStatus.HIT_EXACT, CacheStatus.HIT_SEMANTIC)
SAVINGS_LEVERS = ("cache", "routing", "compression", "batch")
HOUR = timedelta(hours=1)
ZERO_USD = Decimal(0)


def _sum_or_zero(field_name: str):
    return Coalesce(Sum(field_name), Value(ZERO_USD), output_field=DecimalField(max_digits=20, decimal_places=10))


def rollup_aggregates() -> dict:
    """The ledger aggregates every rollup row holds, as ORM expressions."""
    aggregates = {
        "requests": Count("id", filter=REQUEST_ROWS),
        "errors": Count("id", filter=REQUEST_ROWS & Q(http_status__gte=400)),
        "upstream_errors": Count("id", filter=REQUEST_ROWS & Q(http_status__gte=500)),
        "cache_hits": Count("id", filter=Q(cache_status__in=CACHE_HIT_STATUSES)),
        "routed_to_large": Count("id", filter=Q(routed_to_large=True)),
        "prompt_tokens": Sum("prompt_tokens"),
        "cached_tokens": Sum("cached_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "cost_usd": Sum("cost_usd"),
        "latency_sum_ms": Sum("total_latency_ms"),
    }
    for lever in SAVINGS_LEVERS:
        aggregates[f"saved_{lever}_usd"] = _sum_or_zero(f"saved_{lever}_usd")
    lower = -1
    for index, upper in enumerate(LATENCY_BUCKET_EDGES_MS):
        aggregates[f"latency_le_{index}"] = Count(
            "id", filter=Q(total_latency_ms__gt=lower, total_latency_ms__lte=upper)
        )
        lower = upper
    aggregates["latency_overflow"] = Count("id", filter=Q(total_latency_ms__gt=lower))
    return aggregates


def _rollup_values(row: dict) -> dict:
    histogram = [row.pop(f"latency_le_{index}") for index in range(len(LATENCY_BUCKET_EDGES_MS))]
    histogram.append(row.pop("latency_overflow"))
    return {**row, "latency_histogram": histogram}


def _rebuild_hours(*, tenant: Tenant, start: datetime, end: datetime) -> int:
    """Replace the tenant's hourly rollups for the UTC hours in [start, end) with fresh ledger aggregates."""
    rows = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(created_at__gte=start, created_at__lt=end)
        .annotate(bucket_start=TruncHour("created_at", tzinfo=UTC))
        .values("bucket_start", "team_id", "served_model")
        .annotate(**rollup_aggregates())
        .order_by()
    )
    rollups = [UsageRollupHourly(tenant=tenant, **_rollup_values(row)) for row in rows]
    UsageRollupHourly.objects.for_tenant(tenant).filter(bucket_start__gte=start, bucket_start__lt=end).delete()
    UsageRollupHourly.objects.bulk_create(rollups, batch_size=1000)
    return len(rollups)


def _rebuild_days(*, tenant: Tenant, first: date, last: date) -> int:
    """Replace the tenant's daily rollups for local days first..last with fresh ledger aggregates."""
    zone = tenant_zone(tenant=tenant)
    rows = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(
            created_at__gte=datetime.combine(first, time.min, tzinfo=zone),
            created_at__lt=datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone),
        )
        .annotate(day=TruncDate("created_at", tzinfo=zone))
        .values("day", "team_id", "served_model")
        .annotate(**rollup_aggregates())
        .order_by()
    )
    rollups = [UsageRollupDaily(tenant=tenant, **_rollup_values(row)) for row in rows]
    UsageRollupDaily.objects.for_tenant(tenant).filter(day__gte=first, day__lte=last).delete()
    UsageRollupDaily.objects.bulk_create(rollups, batch_size=1000)
    return len(rollups)


def _contiguous_runs(hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted hour starts as [start, end) runs of consecutive hours."""
    runs: list[tuple[datetime, datetime]] = []
    for hour in sorted(hours):
        if runs and runs[-1][1] == hour:
            runs[-1] = (runs[-1][0], hour + HOUR)
        else:
            runs.append((hour, hour + HOUR))
    return runs


def _local_days(*, tenant: Tenant, start: datetime, end: datetime) -> tuple[date, date]:
    zone = tenant_zone(tenant=tenant)
    return start.astimezone(zone).date(), (end - timedelta(microseconds=1)).astimezone(zone).date()


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    floor = _floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def _lock_rollups() -> RollupCursor:
    cursor, _ = RollupCursor.objects.get_or_create(name=ROLLUP_CURSOR_NAME)
    return RollupCursor.objects.select_for_update().get(pk=cursor.pk)


def usage_rollups_refresh(*, max_rows: int = 200_000) -> int:
    """Fold ledger rows written since the last run into the rollups; returns how many ledger rows it covered."""
    with transaction.atomic():
        cursor = _lock_rollups()
        newest_id = UsageRecord.objects.aggregate(newest=Max("id"))["newest"] or 0
        upper_id = min(newest_id, cursor.last_usage_id + max_rows)
        if upper_id <= cursor.last_usage_id:
            return 0
        touched = (
            UsageRecord.objects.filter(id__gt=cursor.last_usage_id, id__lte=upper_id)
            .annotate(hour=TruncHour("created_at", tzinfo=UTC))
            .values_list("tenant_id", "hour")
            .distinct()
            .order_by()
        )
        hours_by_tenant: dict[int, set[datetime]] = defaultdict(set)
        for tenant_id, hour in touched:
            hours_by_tenant[tenant_id].add(hour)
        for tenant in Tenant.objects.filter(pk__in=hours_by_tenant):
            for start, end in _contiguous_runs(hours_by_tenant[tenant.pk]):
                _rebuild_hours(tenant=tenant, start=start, end=end)
                first, last = _local_days(tenant=tenant, start=start, end=end)
                _rebuild_days(tenant=tenant, first=first, last=last)
        covered = upper_id - cursor.last_usage_id
        cursor.last_usage_id = upper_id
        cursor.save(update_fields=["last_usage_id", "updated_at"])
    return covered


def usage_rollups_rebuild(*, tenant: Tenant, first: date, last: date) -> None:
    """Rebuild every hourly and daily rollup of the tenant for local days first..last, from the ledger."""
    zone = tenant_zone(tenant=tenant)
    start = datetime.combine(first, time.min, tzinfo=zone).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone).astimezone(UTC)
    with transaction.atomic():
        _lock_rollups()
        # Whole UTC hours covering the local days; for a half-hour zone this reaches 30 minutes past either end.
        _rebuild_hours(tenant=tenant, start=_floor_hour(start), end=_ceil_hour(end))
        _rebuild_days(tenant=tenant, first=first, last=last)


def usage_rollups_rebuild_recent(*, days: int = 2) -> int:
    """Rebuild the last `days` local days of every active tenant; returns how many tenants it covered."""
    tenants = list(Tenant.objects.filter(is_active=True))
    for tenant in tenants:
        today = datetime.now(tenant_zone(tenant=tenant)).date()
        usage_rollups_rebuild(tenant=tenant, first=today - timedelta(days=days - 1), last=today)
    return len(tenants)


def latency_p95_ms(histogram: list[int]) -> float | None:
    """Estimate the 95th percentile from a summed latency histogram.

    Nearest rank, then linear interpolation inside the bucket the rank falls in, so the estimate always lies
    in the same bucket as the true p95. A rank in the overflow bucket answers the last edge (a lower bound).
    """
    total = sum(histogram)
    if total == 0:
        return None
    rank = -(-95 * total // 100)
    seen = 0
    lower = 0
    for count, upper in zip(histogram, LATENCY_BUCKET_EDGES_MS, strict=False):
        if seen + count >= rank:
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper
    return float(LATENCY_BUCKET_EDGES_MS[-1])


def histogram_sum(histograms: Iterable[list[int]]) -> list[int]:
    total = [0] * (len(LATENCY_BUCKET_EDGES_MS) + 1)
    for histogram in histograms:
        for index, count in enumerate(histogram):
            total[index] += count
    return total
