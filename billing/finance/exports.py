"""CSV exports of the ledger for finance: per-request rows, or aggregates grouped by day, team, key, model, tag or end
customer.

Money is written as decimal strings. `cost_usd` always carries the ledger's full precision (10 places):
per-request rows show the stored cost, aggregate rows show the exact sum of the stored costs, so any
aggregate export sums to the per-request export's product rows with nothing lost. `cost_usd_rounded`
is the same figure rounded to cents, half to even; it is for reading, and its column sum may differ from
the rounded total by a few cents.

Aggregates are product usage: the calls of shadow evaluations (kind `evaluation`) are listed in the per-request
export and summed in no group; what they cost is the evaluation spend, reported on its own
(billing.quality.selectors.evaluation_spend_usd).

Rows come from a server-side cursor in chunks and are written as they are read, so memory stays flat
however many rows a range holds. An export too long to stream while the client waits is recorded
(usage_export_create) and written to storage by a Celery task (usage_export_write).
"""

import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date
from functools import partial

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Q, QuerySet
from django.http import FileResponse, HttpRequest, StreamingHttpResponse
from django.utils import timezone

from billing.finance.csv_writer import FormulaSafeWriter
from billing.ledger.columns import (
    AGGREGATE_COLUMNS,
    GROUPINGS,
    REQUEST_COLUMNS,
    ExportGrouping,
    column_fields,
    csv_cells,
    group_key,
)
from billing.ledger.selectors import ledger_between, tenant_zone
from billing.ledger.totals import ledger_aggregates
from billing.models import PRODUCT_ROWS, CacheStatus, ExportStatus, UsageExport, UsageRecord
from tenants.models import Tenant

CHUNK_ROWS = 2_000
CHUNK_BYTES = 64 * 1024
DEFAULT_SYNC_MAX_DAYS = 62
DEFAULT_MAX_DAYS = 366


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


def comma_separated(
    value: str | Iterable[str] | None, *, choices: Iterable[str], field: str, what: str = "grouping"
) -> list[str]:
    """The names a comma-separated parameter (or a list) gives, in order and each once; ExportError for a name not
    among ``choices``."""
    choices = list(choices)
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else list(value or [])
    chosen: list[str] = []
    for name in filter(None, names):
        if name not in choices:
            raise ExportError(
                f"Unknown {what} '{name}'; use any of {', '.join(choices)}, comma-separated.",
                code="unknown_grouping",
                field=field,
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def parse_group_by(value: str | Iterable[str] | None) -> tuple[ExportGrouping, ...]:
    return tuple(map(ExportGrouping, comma_separated(value, choices=ExportGrouping.values, field="group_by")))


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


def request_rows(records: QuerySet[UsageRecord], *, zone) -> Iterator[list]:
    """One row of REQUEST_COLUMNS per ledger row, oldest first."""
    rows = records.order_by("created_at", "id").values(*column_fields(REQUEST_COLUMNS))
    cells = csv_cells(REQUEST_COLUMNS, zone=zone)
    for row in rows.iterator(chunk_size=CHUNK_ROWS):
        yield cells(row)


def request_csv_chunks(records: QuerySet[UsageRecord], *, zone) -> Iterator[bytes]:
    return csv_chunks([column.name for column in REQUEST_COLUMNS], request_rows(records, zone=zone))


def aggregate_queryset(records: QuerySet[UsageRecord], *, group_by: tuple[ExportGrouping, ...], zone) -> QuerySet:
    """The AGGREGATE_COLUMNS' totals per group, as dicts that also hold each grouping's value under group_key(),
    ordered by the groups.

    Every grouping partitions the product rows (a tag grouping groups by the whole tag set of a request), so the
    groups' costs always sum to the ledger's product spend; evaluation rows are left out.
    """
    keys = {group_key(grouping): GROUPINGS[grouping].expression(zone) for grouping in group_by}
    totals = ledger_aggregates(*column_fields(AGGREGATE_COLUMNS))
    return records.filter(PRODUCT_ROWS).annotate(**keys).values(*keys).annotate(**totals).order_by(*keys)


def group_labels(row: dict, group_by: tuple[ExportGrouping, ...]) -> dict[str, str]:
    return {str(grouping): GROUPINGS[grouping].label(row[group_key(grouping)]) for grouping in group_by}


def aggregate_rows(records: QuerySet[UsageRecord], *, group_by: tuple[ExportGrouping, ...], zone) -> Iterator[list]:
    """One row per group: the group labels, then AGGREGATE_COLUMNS."""
    cells = csv_cells(AGGREGATE_COLUMNS, zone=zone)
    for row in aggregate_queryset(records, group_by=group_by, zone=zone).iterator(chunk_size=CHUNK_ROWS):
        yield [*group_labels(row, group_by).values(), *cells(row)]


class _LineBuffer:
    """csv.writer's file: hands each written line back instead of storing it."""

    def write(self, line: str) -> str:
        return line


def csv_chunks(header: Iterable[str], rows: Iterable[Sequence]) -> Iterator[bytes]:
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


def usage_export_chunks(
    *, tenant: Tenant, params: ExportParams, filters: "UsageFilters | None" = None
) -> Iterator[bytes]:
    """The whole export as CSV bytes: ledger rows without a grouping, aggregates with one.

    The streamed export and the async one both call this with their filters, so both select the same rows.
    """
    records = ledger_between(tenant=tenant, since=params.since, until=params.until)
    if filters is not None:
        records = filters.apply(records)
    zone = tenant_zone(tenant=tenant)
    if not params.group_by:
        return request_csv_chunks(records, zone=zone)
    header = [*params.group_by, *(column.name for column in AGGREGATE_COLUMNS)]
    return csv_chunks(header, aggregate_rows(records, group_by=params.group_by, zone=zone))


def usage_export_create(
    *, tenant: Tenant, user, params: ExportParams, filters: "UsageFilters | None" = None
) -> UsageExport:
    """Record an export too long to stream while the client waits; the caller queues its writing
    (billing.finance.tasks.usage_export_queue)."""
    return UsageExport.objects.create(
        tenant=tenant,
        requested_by=user,
        since=params.since,
        until=params.until,
        group_by=params.group_by_text,
        filters=filters.stored() if filters is not None else {},
    )


def usage_export_write(*, export: UsageExport) -> UsageExport:
    """Write an export's CSV to storage under a name only the export row knows; a failure is recorded on the row.
    The Celery task billing.finance.tasks.usage_export_write_task runs it."""
    params = export_params_parse(since=export.since, until=export.until, group_by=export.group_by)
    filters = usage_filters_parse(**export.filters)
    UsageExport.objects.for_tenant(export.tenant_id).filter(pk=export.pk).update(status=ExportStatus.RUNNING)
    name = f"usage-exports/{export.tenant_id}/{export.pk}-{params.filename(export.tenant)}"
    try:
        # Spooled to a local temporary file first, so any storage backend (S3 included) gets one upload.
        with tempfile.TemporaryFile() as spool:
            for chunk in usage_export_chunks(tenant=export.tenant, params=params, filters=filters):
                spool.write(chunk)
            spool.seek(0)
            name = default_storage.save(name, File(spool))
    except Exception as error:
        export.status, export.error = ExportStatus.FAILED, str(error)
        export.finished_at = timezone.now()
        export.save(update_fields=["status", "error", "finished_at"])
        raise
    export.status, export.file_name, export.finished_at = ExportStatus.DONE, name, timezone.now()
    export.save(update_fields=["status", "file_name", "finished_at"])
    return export


def csv_streaming_response(request: HttpRequest, chunks: Iterator[bytes], *, filename: str) -> StreamingHttpResponse:
    """Stream CSV chunks: as an async iterator under ASGI, or Django would read them all into memory first."""
    streamed = async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(streamed, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def stored_csv_response(request: HttpRequest, name: str, *, filename: str) -> FileResponse:
    """A CSV in storage (an async export's) as an attachment of known length. Under ASGI it is read CHUNK_BYTES at a
    time through an async iterator, as csv_streaming_response streams, or Django would read the whole file into
    memory before sending a byte."""
    stored = default_storage.open(name, "rb")
    response = FileResponse(stored, as_attachment=True, filename=filename, content_type="text/csv; charset=utf-8")
    if isinstance(request, ASGIRequest):
        response.streaming_content = async_chunks(iter(partial(stored.read, CHUNK_BYTES), b""))
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
    customer: str = ""

    @property
    def narrows(self) -> bool:
        return self != UsageFilters()

    def stored(self) -> dict[str, str]:
        """The filters given, as UsageExport.filters keeps them; usage_filters_parse(**stored) reads them back."""
        return {name: value for name, value in asdict(self).items() if value}

    def apply(self, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        if self.customer:
            queryset = queryset.filter(customer=self.customer)
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


USAGE_FILTER_NAMES = tuple(field.name for field in fields(UsageFilters))


def usage_filters_parse(
    *, team: str = "", key: str = "", model: str = "", status: str = "", cache: str = "", customer: str = ""
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
    return UsageFilters(team=team, key=key, model=model, status=status, cache=cache, customer=customer)
