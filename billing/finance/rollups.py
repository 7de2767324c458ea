"""Keep the hourly and daily rollups, and the hourly rollups per end customer, equal to the ledger.

Every way in is idempotent (a bucket is always rebuilt whole, an hour from the ledger and a day from its hours,
never incremented):

- `usage_rollups_refresh` folds in ledger rows written since the last run (by ledger id), rebuilding only the
  hours and days they touch. Beat runs it every minute.
- `usage_rollups_rebuild` rebuilds every bucket of a tenant in a time range. Beat runs it nightly over the last two
  days, which picks up rows whose insert committed after a later id had already been folded in; the seed and
  backfills call it directly, and `manage.py usage_rollups_rebuild` from a day on (`usage_rollups_rebuild_since`).
- `usage_rollups_rezone` rebuilds every daily rollup of a tenant whose time zone changed (a task that
  tenants.services.tenant_update queues).

Each takes the cursor row's lock, so two rollup writers never interleave a bucket's delete and insert.

Pages that read the rollups call `usage_rollups_refresh_if_stale` first: when a ledger row older than
LLMOPS_ROLLUPS_MAX_AGE_SECONDS is not folded in yet, it runs the refresh, unless another one holds the lock.
"""

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Expression, Max, Min, Q, Sum
from django.db.models.functions import TruncDate, TruncHour
from django.utils import timezone

from billing.ledger.selectors import tenant_days_bounds, tenant_zone
from billing.ledger.totals import TOTALS, ledger_aggregates
from billing.models import (
    PRODUCT_ROWS,
    REQUEST_ROWS,
    RollupCursor,
    UsageCustomerRollupHourly,
    UsageKind,
    UsageRecord,
    UsageRollupDaily,
    UsageRollupHourly,
)
from billing.models.rollups import LATENCY_BUCKET_EDGES_MS
from tenants.models import Tenant
from tenants.selectors import tenants_active

ROLLUP_CURSOR_NAME = "usage"
HOUR = timedelta(hours=1)


def rollup_aggregates() -> dict:
    """The ledger aggregates every rollup row holds, as ORM expressions: every total, and the latency histogram.

    The latency sum and histogram are of requests only, as `requests` is: a call made for a request (a failed
    attempt, a compression summary, a cache embedding) has a latency of its own, often near zero, that is no request's.
    """
    aggregates = ledger_aggregates()
    lower = -1
    for index, upper in enumerate(LATENCY_BUCKET_EDGES_MS):
        aggregates[f"latency_le_{index}"] = Count(
            "id", filter=REQUEST_ROWS & Q(total_latency_ms__gt=lower, total_latency_ms__lte=upper)
        )
        lower = upper
    aggregates["latency_overflow"] = Count("id", filter=REQUEST_ROWS & Q(total_latency_ms__gt=lower))
    return aggregates


def _rollup_values(row: dict) -> dict:
    histogram = [row.pop(f"latency_le_{index}") for index in range(len(LATENCY_BUCKET_EDGES_MS))]
    histogram.append(row.pop("latency_overflow"))
    return {**row, "latency_histogram": histogram}


def _ledger_buckets(*, tenant: Tenant, start: datetime, end: datetime, **bucket: Expression) -> list[dict]:
    """The rollup values of the tenant's ledger rows in [start, end), per bucket, team and served model: the product
    rows' totals, and the cost of the evaluation rows apart (a bucket with only those has zero product totals)."""
    keys = (*bucket, "team_id", "served_model")
    ledger = UsageRecord.objects.for_tenant(tenant).filter(created_at__gte=start, created_at__lt=end).annotate(**bucket)
    product = ledger.filter(PRODUCT_ROWS).values(*keys).annotate(**rollup_aggregates()).order_by()
    buckets = {tuple(row[key] for key in keys): _rollup_values(row) for row in product}
    evaluations = (
        ledger.filter(kind=UsageKind.EVALUATION).values(*keys).annotate(evaluation_cost_usd=Sum("cost_usd")).order_by()
    )
    for row in evaluations:
        values = buckets.get(tuple(row[key] for key in keys)) or _empty_bucket({key: row[key] for key in keys})
        values["evaluation_cost_usd"] = row["evaluation_cost_usd"]
        buckets[tuple(row[key] for key in keys)] = values
    return list(buckets.values())


def _empty_bucket(key: dict) -> dict:
    return {**key, **dict.fromkeys(TOTALS, 0), "latency_histogram": [0] * (len(LATENCY_BUCKET_EDGES_MS) + 1)}


def _rebuild_hours(*, tenant: Tenant, start: datetime, end: datetime) -> int:
    """Replace the tenant's hourly rollups (and hourly customer rollups) for the UTC hours in [start, end) with fresh
    ledger aggregates."""
    buckets = _ledger_buckets(tenant=tenant, start=start, end=end, bucket_start=TruncHour("created_at", tzinfo=UTC))
    rollups = [UsageRollupHourly(tenant=tenant, **values) for values in buckets]
    UsageRollupHourly.objects.for_tenant(tenant).filter(bucket_start__gte=start, bucket_start__lt=end).delete()
    UsageRollupHourly.objects.bulk_create(rollups, batch_size=1000)
    _rebuild_customer_hours(tenant=tenant, start=start, end=end)
    return len(rollups)


CUSTOMER_ROLLUP_TOTALS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


def _rebuild_customer_hours(*, tenant: Tenant, start: datetime, end: datetime) -> None:
    rows = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(PRODUCT_ROWS, created_at__gte=start, created_at__lt=end)
        .exclude(customer="")
        .annotate(bucket_start=TruncHour("created_at", tzinfo=UTC))
        .values("bucket_start", "team_id", "customer")
        .annotate(**ledger_aggregates(*CUSTOMER_ROLLUP_TOTALS))
        .order_by()
    )
    rollups = [UsageCustomerRollupHourly(tenant=tenant, **row) for row in rows.iterator(chunk_size=2000)]
    UsageCustomerRollupHourly.objects.for_tenant(tenant).filter(bucket_start__gte=start, bucket_start__lt=end).delete()
    UsageCustomerRollupHourly.objects.bulk_create(rollups, batch_size=1000)


def _rebuild_days(*, tenant: Tenant, first: date, last: date) -> int:
    """Replace the tenant's daily rollups for local days first..last with fresh aggregates.

    Summed from the hourly rollups when every day starts on a whole UTC hour (a day holds a few hundred hourly rows
    instead of a day of ledger rows); from the ledger in half-hour zones. Rebuild the hours first.
    """
    zone = tenant_zone(tenant=tenant)
    start, end = tenant_days_bounds(tenant=tenant, since=first, until=last)
    if _days_start_on_whole_hours(zone=zone, first=first, last=last):
        rollups = _days_from_hours(tenant=tenant, zone=zone, start=start, end=end)
    else:
        buckets = _ledger_buckets(tenant=tenant, start=start, end=end, day=TruncDate("created_at", tzinfo=zone))
        rollups = [UsageRollupDaily(tenant=tenant, **values) for values in buckets]
    UsageRollupDaily.objects.for_tenant(tenant).filter(day__gte=first, day__lte=last).delete()
    UsageRollupDaily.objects.bulk_create(rollups, batch_size=1000)
    return len(rollups)


def _days_start_on_whole_hours(*, zone, first: date, last: date) -> bool:
    """Whether local days first..last, and the start of the day after, fall on whole UTC hours."""
    days = (first + timedelta(days=offset) for offset in range((last - first).days + 2))
    return all(datetime.combine(day, time.min, tzinfo=zone).utcoffset() % HOUR == timedelta(0) for day in days)


def _days_from_hours(*, tenant: Tenant, zone, start: datetime, end: datetime) -> list[UsageRollupDaily]:
    days: dict[tuple, UsageRollupDaily] = {}
    hours = UsageRollupHourly.objects.for_tenant(tenant).filter(bucket_start__gte=start, bucket_start__lt=end)
    for hour in hours.order_by("bucket_start"):
        key = (hour.bucket_start.astimezone(zone).date(), hour.team_id, hour.served_model)
        day = days.get(key)
        if day is None:
            days[key] = day = UsageRollupDaily(
                tenant=tenant, day=key[0], team_id=hour.team_id, served_model=hour.served_model, latency_histogram=[]
            )
        for name in (*TOTALS, "evaluation_cost_usd"):
            setattr(day, name, getattr(day, name) + getattr(hour, name))
        day.latency_histogram = histogram_sum([day.latency_histogram, hour.latency_histogram])
    return list(days.values())


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


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def _lock_rollups(*, wait: bool = True) -> RollupCursor | None:
    """The cursor row, locked; None when `wait` is false and another writer holds the lock."""
    cursor, _ = RollupCursor.objects.get_or_create(name=ROLLUP_CURSOR_NAME)
    return RollupCursor.objects.select_for_update(skip_locked=not wait).filter(pk=cursor.pk).first()


def usage_rollups_refresh(*, max_rows: int = 200_000, wait: bool = True) -> int:
    """Fold ledger rows written since the last run into the rollups; returns how many ledger rows it covered.

    With `wait=False` it returns 0 at once when another refresh or rebuild is running.
    """
    with transaction.atomic():
        cursor = _lock_rollups(wait=wait)
        if cursor is None:
            return 0
        # Unscoped, reviewed: the fold reads every tenant's new ledger rows (and those tenants, inactive ones too), each
        # into its own tenant's rollups.
        ledger = UsageRecord.objects.unscoped()
        newest_id = ledger.aggregate(newest=Max("id"))["newest"] or 0
        upper_id = min(newest_id, cursor.last_usage_id + max_rows)
        if upper_id <= cursor.last_usage_id:
            return 0
        touched = (
            ledger.filter(id__gt=cursor.last_usage_id, id__lte=upper_id)
            .annotate(hour=TruncHour("created_at", tzinfo=UTC))
            .values_list("tenant_id", "hour")
            .distinct()
            .order_by()
        )
        hours_by_tenant: dict[int, set[datetime]] = defaultdict(set)
        for tenant_id, hour in touched:
            hours_by_tenant[tenant_id].add(hour)
        for tenant in Tenant.objects.unscoped().filter(pk__in=hours_by_tenant):
            for start, end in _contiguous_runs(hours_by_tenant[tenant.pk]):
                _rebuild_hours(tenant=tenant, start=start, end=end)
                first, last = _local_days(tenant=tenant, start=start, end=end)
                _rebuild_days(tenant=tenant, first=first, last=last)
        covered = upper_id - cursor.last_usage_id
        cursor.last_usage_id = upper_id
        cursor.save(update_fields=["last_usage_id", "updated_at"])
    return covered


def usage_rollups_refresh_if_stale() -> int:
    """Refresh when the rollups lack a ledger row older than LLMOPS_ROLLUPS_MAX_AGE_SECONDS.

    For pages that read the rollups: when they are fresh this costs two indexed reads, and a page never waits for a
    refresh another process is running. Returns how many ledger rows it covered.
    """
    folded = RollupCursor.objects.filter(name=ROLLUP_CURSOR_NAME).values_list("last_usage_id", flat=True).first()
    too_old = timezone.now() - timedelta(seconds=settings.LLMOPS_ROLLUPS_MAX_AGE_SECONDS)
    # Unscoped, reviewed: whether any tenant's row waits to be folded; a yes or no, no row is read.
    if not UsageRecord.objects.unscoped().filter(id__gt=folded or 0, created_at__lte=too_old).exists():
        return 0
    return usage_rollups_refresh(wait=False)


def usage_rollups_rebuild(*, tenant: Tenant, first: date, last: date) -> None:
    """Rebuild every hourly and daily rollup of the tenant for local days first..last, from the ledger."""
    start, end = (moment.astimezone(UTC) for moment in tenant_days_bounds(tenant=tenant, since=first, until=last))
    with transaction.atomic():
        _lock_rollups()
        # Whole UTC hours covering the local days; for a half-hour zone this reaches 30 minutes past either end.
        _rebuild_hours(tenant=tenant, start=floor_hour(start), end=_ceil_hour(end))
        _rebuild_days(tenant=tenant, first=first, last=last)


def usage_rollups_rebuild_recent(*, days: int = 2) -> int:
    """Rebuild the last `days` local days of every active tenant; returns how many tenants it covered."""
    tenants = list(tenants_active())
    for tenant in tenants:
        today = datetime.now(tenant_zone(tenant=tenant)).date()
        usage_rollups_rebuild(tenant=tenant, first=today - timedelta(days=days - 1), last=today)
    return len(tenants)


# A rebuild of many days goes a month at a time, each in a transaction of its own: the minutely refresh waits on the
# lock no longer than one month's rebuild.
REBUILD_DAYS_AT_ONCE = 31


def _day_runs(first: date, last: date) -> Iterator[tuple[date, date]]:
    """first..last in runs of at most REBUILD_DAYS_AT_ONCE days."""
    while first <= last:
        run_last = min(first + timedelta(days=REBUILD_DAYS_AT_ONCE - 1), last)
        yield first, run_last
        first = run_last + timedelta(days=1)


def _first_ledger_row_at(*, tenant: Tenant) -> datetime | None:
    return UsageRecord.objects.for_tenant(tenant).aggregate(first=Min("created_at"))["first"]


def usage_rollups_rebuild_since(*, tenant: Tenant, since: date) -> tuple[date, date] | None:
    """Rebuild the tenant's hourly and daily rollups from the local day `since` to today, from the ledger, a month per
    transaction: for rollups that older code wrote (manage.py usage_rollups_rebuild). Returns the first and last day
    rebuilt; None when the ledger has no row of the tenant.

    It starts no earlier than the day of the tenant's oldest ledger row, and the day after when hours of that day
    before the row have rollups (the purge cuts at another midnight than the tenant's): hours rebuilt from a ledger
    the retention purge emptied would lose the totals their rollups keep.
    """
    zone = tenant_zone(tenant=tenant)
    first_row_at = _first_ledger_row_at(tenant=tenant)
    if first_row_at is None:
        return None
    first_day = first_row_at.astimezone(zone).date()
    purged_hours = UsageRollupHourly.objects.for_tenant(tenant).filter(
        bucket_start__gte=datetime.combine(first_day, time.min, tzinfo=zone), bucket_start__lt=floor_hour(first_row_at)
    )
    if purged_hours.exists():
        first_day += timedelta(days=1)
    first, last = max(since, first_day), datetime.now(zone).date()
    if first > last:
        return None
    for run_first, run_last in _day_runs(first, last):
        usage_rollups_rebuild(tenant=tenant, first=run_first, last=run_last)
    return first, last


def usage_rollups_rezone(*, tenant: Tenant) -> int:
    """Rebuild every daily rollup of the tenant in its time zone, a month per transaction; returns how many it wrote.

    For a change of time zone, which moves the bounds of every local day, while the refresh and the nightly rebuild
    reach only the days that new rows touch and the last two. The hourly rollups are UTC hours and stay as they are.
    In a zone whose days start on whole UTC hours the days are summed from them, so a day whose ledger rows were
    purged keeps its totals; a half-hour zone's days are summed from the ledger, so there, when the hourly rollups
    go back further than the ledger, the rebuild starts at the day of its oldest row and the days before keep the
    bounds they had.
    """
    zone = tenant_zone(tenant=tenant)
    first_hour = UsageRollupHourly.objects.for_tenant(tenant).aggregate(first=Min("bucket_start"))["first"]
    if first_hour is None:
        return 0
    # The old zone's days may begin a day before the new zone's first or end a day after its today: those go too.
    stored = UsageRollupDaily.objects.for_tenant(tenant).aggregate(first=Min("day"), last=Max("day"))
    first = min(first_hour.astimezone(zone).date(), stored["first"] or date.max)
    last = max(datetime.now(zone).date(), stored["last"] or date.min)
    if not _days_start_on_whole_hours(zone=zone, first=first, last=last):
        first_row_at = _first_ledger_row_at(tenant=tenant)
        if first_row_at is None:
            return 0
        if floor_hour(first_row_at) > first_hour:
            first = max(first, first_row_at.astimezone(zone).date())
    written = 0
    for run_first, run_last in _day_runs(first, last):
        with transaction.atomic():
            _lock_rollups()
            written += _rebuild_days(tenant=tenant, first=run_first, last=run_last)
    return written


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
