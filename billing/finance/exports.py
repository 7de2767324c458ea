"""CSV exports of the ledger for finance: per-request rows, or aggregates grouped by day, team, key, model or tag.

Money is written as decimal strings. `cost_usd` always carries the ledger's full precision (10 places):
per-request rows show the stored cost, aggregate rows show the exact sum of the stored costs, so any
aggregate export sums to the per-request export and to the ledger with nothing lost. `cost_usd_rounded`
is the same figure rounded to cents, half to even; it is for reading, and its column sum may differ from
the rounded total by a few cents.

Rows come from a server-side cursor in chunks and are written as they are read, so memory stays flat
however many rows a range holds.
"""

from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import models
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, StreamingHttpResponse

from billing.finance.csv_writer import FormulaSafeWriter
from billing.ledger.costs import format_cost
from billing.ledger.selectors import NO_SERVED_MODEL, tenant_zone
from billing.models import REQUEST_ROWS, CacheStatus, UsageRecord
from tenants.models import Membership, Role, Tenant

CENT = Decimal("0.01")
CHUNK_ROWS = 2_000
CHUNK_BYTES = 64 * 1024
FINANCE_ROLES = frozenset({Role.OWNER, Role.ADMIN, Role.FINANCE})
DEFAULT_SYNC_MAX_DAYS = 62
DEFAULT_MAX_DAYS = 366
UNTAGGED_LABEL = "(untagged)"

LEDGER_COLUMNS = (
    "request_id",
    "created_at",
    "team",
    "api_key_prefix",
    "endpoint",
    "requested_model",
    "served_model",
    "is_stream",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "usage_estimated",
    "cost_usd",
    "cost_usd_rounded",
    "upstream_latency_ms",
    "total_latency_ms",
    "cache_status",
    "routed_to_large",
    "http_status",
    "error_code",
    "kind",
    "parent_request_id",
)
AGGREGATE_COLUMNS = (
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "cost_usd_rounded",
)


class ExportGrouping(models.TextChoices):
    DAY = "day", "Day in the tenant's time zone"
    TEAM = "team", "Team"
    KEY = "key", "API key prefix"
    MODEL = "model", "Served model"
    TAG = "tag", "Tag set"


class ExportError(Exception):
    """Bad export parameters, with a stable code for the API's JSON error."""

    def __init__(self, message: str, *, code: str, field: str = ""):
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field


@dataclass(frozen=True, slots=True)
class ExportParams:
    since: date
    until: date
    group_by: tuple[ExportGrouping, ...]

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1

    @property
    def group_by_text(self) -> str:
        return ",".join(self.group_by)

    def filename(self, tenant: Tenant) -> str:
        kind = "-".join(self.group_by) if self.group_by else "requests"
        return f"usage-{tenant.slug}-{kind}-{self.since}-{self.until}.csv"


FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(9998, 12, 31)


def sync_export_max_days() -> int:
    return getattr(settings, "LLMOPS_EXPORT_SYNC_MAX_DAYS", DEFAULT_SYNC_MAX_DAYS)


def export_max_days() -> int:
    return getattr(settings, "LLMOPS_EXPORT_MAX_DAYS", DEFAULT_MAX_DAYS)


def _parse_day(value: str | date | None, *, field: str) -> date:
    if isinstance(value, date):
        day = value
    elif not value:
        raise ExportError(f"'{field}' is required, as a date like 2025-01-31.", code="missing_date", field=field)
    else:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ExportError(
                f"'{field}' must be a date like 2025-01-31, not '{value}'.", code="invalid_date", field=field
            ) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        # The ledger's range ends the day after `until`, in the tenant's time zone: near date.max that overflows.
        raise ExportError(
            f"'{field}' must be a day from {FIRST_DAY} to {LAST_DAY}, not {day}.", code="invalid_date", field=field
        )
    return day


def parse_group_by(value: str | Iterable[str] | None) -> tuple[ExportGrouping, ...]:
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else list(value or [])
    names = [name for name in names if name]
    groupings = []
    for name in names:
        if name not in ExportGrouping.values:
            raise ExportError(
                f"Unknown grouping '{name}'; use any of {', '.join(ExportGrouping.values)}, comma-separated.",
                code="unknown_grouping",
                field="group_by",
            )
        if ExportGrouping(name) not in groupings:
            groupings.append(ExportGrouping(name))
    return tuple(groupings)


def export_params_parse(
    *, since: str | date | None, until: str | date | None, group_by: str | Iterable[str] | None = None
) -> ExportParams:
    """Validate an export request; raises ExportError with a code the API and the admin show as is."""
    params = ExportParams(
        since=_parse_day(since, field="since"),
        until=_parse_day(until, field="until"),
        group_by=parse_group_by(group_by),
    )
    if params.until < params.since:
        raise ExportError(
            f"'until' ({params.until}) is before 'since' ({params.since}).", code="invalid_range", field="until"
        )
    if params.days > export_max_days():
        raise ExportError(
            f"A range of {params.days} days is longer than the {export_max_days()} days an export may cover; split it.",
            code="range_too_large",
            field="until",
        )
    return params


def is_sync_exportable(params: ExportParams) -> bool:
    return params.days <= sync_export_max_days()


def tenants_exportable_by(*, user) -> QuerySet[Tenant]:
    """Tenants whose usage a user may export: every tenant for a superuser, else where they are owner, admin or
    finance."""
    if user.is_superuser:
        return Tenant.objects.all()
    tenant_ids = Membership.objects.filter(user=user, role__in=FINANCE_ROLES).values("tenant_id")
    return Tenant.objects.filter(pk__in=tenant_ids)


def _ledger_range(queryset: QuerySet, *, tenant: Tenant, params: ExportParams) -> QuerySet:
    zone = tenant_zone(tenant=tenant)
    return queryset.for_tenant(tenant).filter(
        created_at__gte=datetime.combine(params.since, time.min, tzinfo=zone),
        created_at__lt=datetime.combine(params.until + timedelta(days=1), time.min, tzinfo=zone),
    )


def usage_ledger_queryset(*, tenant: Tenant, params: ExportParams) -> QuerySet[UsageRecord]:
    return _ledger_range(UsageRecord.objects.all(), tenant=tenant, params=params)


def _rounded(cost: Decimal) -> str:
    return f"{cost.quantize(CENT, rounding=ROUND_HALF_EVEN):f}"


def ledger_rows(queryset: QuerySet[UsageRecord], *, zone) -> Iterator[tuple]:
    """One tuple per ledger row, in LEDGER_COLUMNS order, oldest first."""
    rows = queryset.order_by("created_at", "id").values_list(
        "request_id",
        "created_at",
        "team__slug",
        "api_key__prefix",
        "endpoint",
        "requested_model",
        "served_model",
        "is_stream",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "usage_estimated",
        "cost_usd",
        "upstream_latency_ms",
        "total_latency_ms",
        "cache_status",
        "routed_to_large",
        "http_status",
        "error_code",
        "kind",
        "parent_request_id",
    )
    for row in rows.iterator(chunk_size=CHUNK_ROWS):
        created_at, cost = row[1], row[12]
        yield (
            row[0],
            created_at.astimezone(zone).isoformat(),
            *row[2:12],
            format_cost(cost),
            _rounded(cost),
            *row[13:],
        )


def _tag_label(tags) -> str:
    return "+".join(sorted(tags)) if tags else UNTAGGED_LABEL


GROUP_EXPRESSIONS = {
    ExportGrouping.TEAM: lambda zone: F("team__slug"),
    ExportGrouping.KEY: lambda zone: F("api_key__prefix"),
    ExportGrouping.MODEL: lambda zone: F("served_model"),
    ExportGrouping.DAY: lambda zone: TruncDate("created_at", tzinfo=zone),
    ExportGrouping.TAG: lambda zone: F("tags"),
}
GROUP_LABELS = {
    ExportGrouping.TEAM: str,
    ExportGrouping.KEY: str,
    ExportGrouping.MODEL: lambda value: value or NO_SERVED_MODEL,
    ExportGrouping.DAY: lambda value: value.isoformat(),
    ExportGrouping.TAG: _tag_label,
}


def aggregate_queryset(queryset: QuerySet[UsageRecord], *, group_by: tuple[ExportGrouping, ...], zone) -> QuerySet:
    """Aggregates per group, as dicts with `group_<grouping>` keys, ordered by the groups.

    Every grouping partitions the ledger (a tag grouping groups by the whole tag set of a request), so the
    groups' costs always sum to the ledger's.
    """
    keys = {f"group_{grouping}": GROUP_EXPRESSIONS[grouping](zone) for grouping in group_by}
    return (
        queryset.annotate(**keys)
        .values(*keys)
        .annotate(
            requests=Count("id", filter=REQUEST_ROWS),
            errors=Count("id", filter=REQUEST_ROWS & Q(http_status__gte=400)),
            prompt_tokens=Sum("prompt_tokens"),
            cached_tokens=Sum("cached_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by(*keys)
    )


def group_labels(row: dict, group_by: tuple[ExportGrouping, ...]) -> dict[str, str]:
    return {str(grouping): GROUP_LABELS[grouping](row[f"group_{grouping}"]) for grouping in group_by}


def aggregate_rows(queryset: QuerySet[UsageRecord], *, group_by: tuple[ExportGrouping, ...], zone) -> Iterator[tuple]:
    """One tuple per group: the group labels, then AGGREGATE_COLUMNS."""
    for row in aggregate_queryset(queryset, group_by=group_by, zone=zone).iterator(chunk_size=CHUNK_ROWS):
        cost = row["cost_usd"]
        yield (
            *group_labels(row, group_by).values(),
            row["requests"],
            row["errors"],
            row["prompt_tokens"],
            row["cached_tokens"],
            row["completion_tokens"],
            format_cost(cost),
            _rounded(cost),
        )


class _LineBuffer:
    """csv.writer's file: hands each written line back instead of storing it."""

    def write(self, line: str) -> str:
        return line


def csv_chunks(header: Iterable[str], rows: Iterable[tuple]) -> Iterator[bytes]:
    """Encode rows as CSV (formula-safe) in chunks of about CHUNK_BYTES, so a response sends few, full packets."""
    writer = FormulaSafeWriter(_LineBuffer())
    pending = [writer.writerow(header)]
    size = len(pending[0])
    for row in rows:
        line = writer.writerow(row)
        pending.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield "".join(pending).encode()
            pending, size = [], 0
    if pending:
        yield "".join(pending).encode()


def usage_export_chunks(*, tenant: Tenant, params: ExportParams, queryset: QuerySet | None = None) -> Iterator[bytes]:
    """The whole export as CSV bytes: ledger rows without a grouping, aggregates with one.

    `queryset` narrows the ledger further (the admin action passes the rows it selected); the tenant and range
    always apply.
    """
    base = _ledger_range(queryset if queryset is not None else UsageRecord.objects.all(), tenant=tenant, params=params)
    zone = tenant_zone(tenant=tenant)
    if params.group_by:
        header = [str(grouping) for grouping in params.group_by] + list(AGGREGATE_COLUMNS)
        return csv_chunks(header, aggregate_rows(base, group_by=params.group_by, zone=zone))
    return csv_chunks(LEDGER_COLUMNS, ledger_rows(base, zone=zone))


def csv_streaming_response(request: HttpRequest, chunks: Iterator[bytes], *, filename: str) -> StreamingHttpResponse:
    """Stream CSV chunks: as an async iterator under ASGI, or Django would read them all into memory first."""
    streamed = async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(streamed, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


async def async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Drive a sync chunk iterator from an ASGI response one chunk at a time.

    Django would otherwise read a sync iterator into a list before sending it. Each step runs in the request's
    thread-sensitive executor, the thread that owns the database connection and its server-side cursor.
    """
    take = sync_to_async(next)
    try:
        while (chunk := await take(chunks, None)) is not None:
            yield chunk
    finally:
        await sync_to_async(getattr(chunks, "close", lambda: None))()


@dataclass(frozen=True, slots=True)
class UsageFilters:
    """Optional narrowing of a tenant's ledger, by the values clients see (slugs, prefixes, names)."""

    team: str = ""
    key: str = ""
    model: str = ""
    status: str = ""
    cache: str = ""

    def apply(self, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        if self.team:
            queryset = queryset.filter(team__slug=self.team)
        if self.key:
            queryset = queryset.filter(api_key__prefix=self.key)
        if self.model:
            queryset = queryset.filter(served_model=self.model)
        if self.status:
            queryset = queryset.filter(self._status_filter())
        if self.cache:
            queryset = queryset.filter(cache_status=self.cache)
        return queryset

    def _status_filter(self) -> Q:
        if self.status == "ok":
            return Q(http_status__lt=400)
        if self.status == "error":
            return Q(http_status__gte=400)
        return Q(http_status=int(self.status))


def usage_filters_parse(
    *, team: str = "", key: str = "", model: str = "", status: str = "", cache: str = ""
) -> UsageFilters:
    is_code = status.isascii() and status.isdigit() and 100 <= int(status) <= 599
    if status and status not in ("ok", "error") and not is_code:
        raise ExportError(
            f"'status' must be ok, error or an HTTP status code, not '{status}'.", code="invalid_status", field="status"
        )
    if cache and cache not in CacheStatus.values:
        raise ExportError(
            f"'cache' must be one of {', '.join(CacheStatus.values)}, not '{cache}'.",
            code="invalid_cache",
            field="cache",
        )
    return UsageFilters(team=team, key=key, model=model, status=status, cache=cache)
