"""The usage API for finance users and tenant admins: usage rows or groups, CSV exports, async exports.

The tenant comes from `?tenant=<slug>` checked against the caller's memberships (owner, admin or finance);
a tenant the caller may not export answers 404 exactly like one that does not exist.
"""

from collections.abc import Mapping

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.pagination import CursorPagination, LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.finance.exports import (
    USAGE_FILTER_NAMES,
    ExportError,
    ExportParams,
    UsageFilters,
    aggregate_queryset,
    comma_separated,
    csv_streaming_response,
    export_params_parse,
    group_labels,
    is_sync_exportable,
    stored_csv_response,
    sync_export_max_days,
    usage_export_chunks,
    usage_export_create,
    usage_filters_parse,
)
from billing.finance.statements import customer_statement_build, customer_statement_chunks
from billing.finance.tasks import usage_export_queue
from billing.ledger.columns import AGGREGATE_COLUMNS, GROUPINGS, REQUEST_COLUMNS, Column, ColumnType, ExportGrouping
from billing.ledger.costs import format_cost
from billing.ledger.selectors import ledger_between, tenant_zone
from billing.models import CUSTOMER_MAX_LENGTH, REQUEST_ROWS, ExportStatus, UsageExport, UsageRecord
from billing.quality.selectors import GROUPINGS as QUALITY_GROUPINGS
from billing.quality.selectors import quality_report
from core.api import TenantSlugField, api_error_response
from tenants.models import Tenant
from tenants.permissions import Action
from tenants.selectors import tenant_named


def export_error_response(error: ExportError) -> Response:
    return api_error_response(error.message, code=error.code, field=error.field)


def finance_tenant(*, user, slug: str) -> Tenant:
    """The tenant named by its slug, if the caller may export it; the only one they may export if unnamed."""
    tenants = Tenant.objects.restrict(user, Action.EXPORT)
    if slug:
        return tenant_named(tenants=tenants, slug=slug)
    only = list(tenants[:2])
    if len(only) != 1:
        raise ExportError("Name the tenant with ?tenant=<slug>.", code="missing_tenant", field="tenant")
    return only[0]


@extend_schema_field(OpenApiTypes.DATE)
class DayField(serializers.CharField):
    """A calendar day like 2025-01-31, read by export_params_parse so the API and the admin refuse alike."""

    def __init__(self, **kwargs):
        super().__init__(max_length=10, **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):  # CharField would take 20250301 and read it as a day
            raise serializers.ValidationError("Must be a date string like 2025-01-31.", code="invalid")
        return super().to_internal_value(data)


def _text(max_length: int, help_text: str) -> serializers.CharField:
    return serializers.CharField(required=False, allow_blank=True, max_length=max_length, help_text=help_text)


class UsageFilterField(serializers.CharField):
    """A filter: omitted or empty selects every row. A value of only spaces, which DRF would trim to empty, is
    refused: read as no filter it would export the whole tenant."""

    default_error_messages = {"only_spaces": "Must not be only spaces: give a value, or leave the filter out."}

    def __init__(self, max_length: int, help_text: str):
        super().__init__(required=False, allow_blank=True, max_length=max_length, help_text=help_text)

    def run_validation(self, data=serializers.empty):
        if isinstance(data, str) and data and not data.strip():
            self.fail("only_spaces")
        return super().run_validation(data)


def refuse_unknown_fields(data, *, known) -> None:
    """Raise a validation error naming each field not in `known`: ignoring one would widen what is exported."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        expected = ", ".join(known)
        raise serializers.ValidationError({name: [f"Unknown field; this takes {expected}."] for name in unknown})


class UsageRangeQuerySerializer(serializers.Serializer):
    """What every usage read and export takes: the tenant, the days, the grouping and the filters
    (USAGE_FILTER_NAMES, read by _usage_filters)."""

    tenant = TenantSlugField(help_text="Tenant slug; optional when you may see exactly one tenant.")
    since = DayField(help_text="First day, tenant time zone.")
    until = DayField(help_text="Last day (inclusive), tenant time zone.")
    group_by = _text(200, f"Comma-separated, among {', '.join(ExportGrouping.values)}; omit for one row per request.")
    team = UsageFilterField(64, "Team slug.")
    key = UsageFilterField(16, "API key prefix.")
    model = UsageFilterField(128, "Served model.")
    status = UsageFilterField(32, "ok, error, or an HTTP status code.")
    cache = UsageFilterField(32, "Cache status: miss, hit-exact, hit-semantic, bypass.")
    customer = UsageFilterField(CUSTOMER_MAX_LENGTH, "End customer: only the rows of this one.")


class UsagePageQuerySerializer(UsageRangeQuerySerializer):
    quality = _text(
        100,
        "Add the `quality` block: agreement of the shadow evaluations in the days, by lever and by these groupings "
        f"(comma-separated, among {', '.join(QUALITY_GROUPINGS)}; `lever` alone for by lever only), and the "
        "evaluation spend.",
    )
    cursor = serializers.CharField(required=False, max_length=1000, help_text="Page cursor (ungrouped).")
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=1000, help_text="Rows per page.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, help_text="Groups per page.")
    offset = serializers.IntegerField(required=False, min_value=0, max_value=10**9, help_text="First group.")


class UsageExportRequestSerializer(UsageRangeQuerySerializer):
    """The streamed export's parameters, in a body; a field it does not take is refused, never ignored."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):  # anything else DRF refuses itself
            refuse_unknown_fields(data, known=self.fields)
        return super().to_internal_value(data)


def _validated(serializer_class: type[serializers.Serializer], data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _usage_query(
    request: Request, serializer_class: type[serializers.Serializer]
) -> tuple[Tenant, ExportParams, UsageFilters]:
    """The tenant, days, grouping and filters of a usage read or export; raises ExportError."""
    query = _validated(serializer_class, request.query_params.dict())
    tenant = finance_tenant(user=request.user, slug=query.get("tenant", ""))
    params = export_params_parse(since=query["since"], until=query["until"], group_by=query.get("group_by"))
    return tenant, params, _usage_filters(query)


def _usage_filters(validated: dict) -> UsageFilters:
    """The filters of a usage read, the streamed export or the async one; raises ExportError."""
    return usage_filters_parse(**{name: validated.get(name, "") for name in USAGE_FILTER_NAMES})


class FirstRendererNegotiation(BaseContentNegotiation):
    """The CSV endpoint answers CSV, or JSON errors, whatever the client's Accept header says."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


@extend_schema_field({"type": "string", "format": "decimal", "example": "0.0012345678"})
class MoneyField(serializers.Field):
    """USD as a decimal string with the ledger's 10 places."""

    def __init__(self, **kwargs):
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, value) -> str:
        return format_cost(value)


API_FIELD_TYPES = {
    ColumnType.TEXT: serializers.CharField,
    ColumnType.INTEGER: serializers.IntegerField,
    ColumnType.BOOLEAN: serializers.BooleanField,
    ColumnType.TIMESTAMP: serializers.DateTimeField,
    ColumnType.MONEY: MoneyField,
}
API_REQUEST_COLUMNS = {column.name: column for column in REQUEST_COLUMNS if column.in_api}


def _source(column: Column) -> dict:
    return {} if column.field == column.name else {"source": column.field.replace("__", ".")}


# The REQUEST_COLUMNS the API has, in their order and with their meaning; a column that is a field of the ledger keeps
# the model's type, choices and limits in the schema. (The docstring is the schema's description.)
class UsageRecordSerializer(serializers.ModelSerializer):
    """One ledger row: a request, or a call the gateway made for one."""

    class Meta:
        model = UsageRecord
        fields = tuple(API_REQUEST_COLUMNS)
        extra_kwargs = {name: {"help_text": column.description} for name, column in API_REQUEST_COLUMNS.items()}

    def build_field(self, field_name, info, model_class, nested_depth):
        column = API_REQUEST_COLUMNS[field_name]
        if column.type == ColumnType.MONEY or column.field != field_name:
            return API_FIELD_TYPES[column.type], _source(column)
        return super().build_field(field_name, info, model_class, nested_depth)


# The groupings asked for (every one in the schema), in the order asked, then the AGGREGATE_COLUMNS the API has.
class UsageGroupSerializer(serializers.Serializer):
    """The totals of one group of ledger rows, named by the groupings asked for, in the order asked."""

    def get_fields(self) -> dict[str, serializers.Field]:
        group_by = self.context.get("group_by") or ExportGrouping.values
        return {
            **{
                grouping: serializers.CharField(required=False, help_text=GROUPINGS[grouping].description)
                for grouping in group_by
            },
            **{
                column.name: API_FIELD_TYPES[column.type](help_text=column.description, **_source(column))
                for column in AGGREGATE_COLUMNS
                if column.in_api
            },
        }


@extend_schema_field(
    PolymorphicProxySerializer(
        component_name="UsageRow",
        serializers=[UsageRecordSerializer, UsageGroupSerializer],
        resource_type_field_name=None,
        many=True,
    )
)
class UsageRowsField(serializers.ListField):
    pass


def _agreements(help_text: str):
    """A list of agreements: each group's values, its counts and its rates as decimal strings."""
    fields = {
        **{
            grouping: serializers.CharField(required=False, help_text=f"The group's {grouping}.")
            for grouping in QUALITY_GROUPINGS
        },
        "samples": serializers.IntegerField(help_text="Shadow evaluations in the group."),
        "agreeing": serializers.IntegerField(help_text="Of those, how many agreed with their reference."),
        "agreement": serializers.CharField(allow_null=True, help_text="agreeing / samples, a decimal string."),
        "lower_bound": serializers.CharField(allow_null=True, help_text="Of the 95% Wilson interval, rounded down."),
        "upper_bound": serializers.CharField(allow_null=True, help_text="Of the 95% Wilson interval, rounded up."),
    }
    return inline_serializer("Agreement", fields=fields, many=True, help_text=help_text)


UsagePageSerializer = inline_serializer(
    "UsagePage",
    fields={
        "count": serializers.IntegerField(required=False, help_text="Grouped only: how many groups in all."),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": UsageRowsField(help_text="Ledger rows (UsageRecord), or groups (UsageGroup) with ?group_by=."),
        "quality": inline_serializer(
            "UsageQuality",
            required=False,
            help_text="With ?quality=: the shadow evaluations' agreement in the days, and the evaluation spend; with "
            "team, key, model, status, cache or customer, those of the requests they select.",
            fields={
                "since": serializers.DateField(),
                "until": serializers.DateField(),
                "group_by": serializers.ListField(child=serializers.CharField()),
                "by_lever": _agreements("Every lever, with or without evaluations."),
                "groups": _agreements("By the groupings asked for; groups with evaluations."),
                "evaluation_spend_usd": MoneyField(help_text="What evaluation calls cost: ledger rows of that kind."),
            },
        ),
    },
)


class UsageCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def paginate_queryset(self, queryset, request, view=None):
        try:
            return super().paginate_queryset(queryset, request, view)
        except DjangoValidationError:  # a cursor whose position is not a time
            raise NotFound(self.invalid_cursor_message) from None


class UsageGroupPagination(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


class UsageView(APIView):
    """Usage of one tenant: one row per request (cursor-paginated), or groups with ?group_by= (limit/offset)."""

    @extend_schema(
        parameters=[UsagePageQuerySerializer],
        responses={200: UsagePageSerializer},
        description="Ungrouped: paginated ledger rows, newest first. Grouped: paginated UsageGroup rows.",
    )
    def get(self, request: Request) -> Response:
        try:
            tenant, params, filters = _usage_query(request, UsagePageQuerySerializer)
            quality = _quality_group_by(request.query_params.get("quality"))
        except ExportError as error:
            return export_error_response(error)
        response = self._page(request, tenant=tenant, params=params, filters=filters)
        if quality is not None:
            # The evaluations of the requests the filters select; of the days alone when there are none.
            requests = ledger_between(tenant=tenant, since=params.since, until=params.until).filter(REQUEST_ROWS)
            response.data["quality"] = quality_report(
                tenant=tenant,
                since=params.since,
                until=params.until,
                group_by=quality,
                requests=filters.apply(requests) if filters.narrows else None,
            )
        return response

    def _page(self, request: Request, *, tenant: Tenant, params: ExportParams, filters: UsageFilters) -> Response:
        records = filters.apply(ledger_between(tenant=tenant, since=params.since, until=params.until))
        if not params.group_by:
            paginator = UsageCursorPagination()
            page = paginator.paginate_queryset(records.select_related("team", "api_key"), request, view=self)
            return paginator.get_paginated_response(UsageRecordSerializer(page, many=True).data)
        groups = aggregate_queryset(records, group_by=params.group_by, zone=tenant_zone(tenant=tenant))
        paginator = UsageGroupPagination()
        page = [
            {**group_labels(row, params.group_by), **row} for row in paginator.paginate_queryset(groups, request, self)
        ]
        serializer = UsageGroupSerializer(page, many=True, context={"group_by": params.group_by})
        return paginator.get_paginated_response(serializer.data)


def _quality_group_by(value: str | None) -> tuple[str, ...] | None:
    """The groupings of ?quality=, lever first; None when the block is not asked for."""
    if value is None:
        return None
    names = comma_separated(value, choices=QUALITY_GROUPINGS, field="quality", what="quality grouping")
    return tuple(dict.fromkeys(["lever", *names]))


class UsageExportCsvView(APIView):
    """Stream a CSV export; ranges longer than the synchronous limit are refused with a pointer to the async export."""

    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(parameters=[UsageRangeQuerySerializer], responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request):
        try:
            tenant, params, filters = _usage_query(request, UsageRangeQuerySerializer)
        except ExportError as error:
            return export_error_response(error)
        if not is_sync_exportable(params):
            return api_error_response(
                f"A range of {params.days} days is too long to stream (the limit is {sync_export_max_days()} days). "
                "POST the same parameters to the async export and fetch the file when it is ready.",
                code="range_too_large_for_sync_export",
                field="until",
                async_export={"method": "POST", "url": "/api/usage/exports/"},
            )
        chunks = usage_export_chunks(tenant=tenant, params=params, filters=filters)
        return csv_streaming_response(request._request, chunks, filename=params.filename(tenant))


class CustomerStatementQuerySerializer(serializers.Serializer):
    tenant = TenantSlugField(help_text="Tenant slug; optional when you may see exactly one tenant.")
    customer = serializers.CharField(max_length=CUSTOMER_MAX_LENGTH, help_text="The end customer's id.")
    since = DayField(help_text="First day, tenant time zone.")
    until = DayField(help_text="Last day (inclusive), tenant time zone.")


class CustomerStatementCsvView(APIView):
    """One end customer's statement: every ledger row of the customer in the days, and their totals, as CSV."""

    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(parameters=[CustomerStatementQuerySerializer], responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request):
        query = _validated(CustomerStatementQuerySerializer, request.query_params.dict())
        try:
            tenant = finance_tenant(user=request.user, slug=query.get("tenant", ""))
            params = export_params_parse(since=query["since"], until=query["until"])
        except ExportError as error:
            return export_error_response(error)
        if not is_sync_exportable(params):
            return api_error_response(
                f"A statement covers at most {sync_export_max_days()} days, not {params.days}; ask for it in parts.",
                code="range_too_large_for_sync_export",
                field="until",
            )
        statement = customer_statement_build(tenant=tenant, customer=query["customer"], params=params)
        chunks = customer_statement_chunks(statement)
        return csv_streaming_response(request._request, chunks, filename=statement.filename)


ExportStatusSerializer = inline_serializer(
    "UsageExportStatus",
    fields={
        "id": serializers.IntegerField(),
        "status": serializers.ChoiceField(choices=ExportStatus.choices),
        "since": serializers.DateField(),
        "until": serializers.DateField(),
        "group_by": serializers.CharField(allow_blank=True),
        "filters": serializers.DictField(
            child=serializers.CharField(), help_text="The filters given (team, key, model, status, cache, customer)."
        ),
        "error": serializers.CharField(allow_blank=True),
        "status_url": serializers.CharField(),
        "download_url": serializers.CharField(allow_null=True),
    },
)


def _export_payload(export: UsageExport) -> dict:
    base = f"/api/usage/exports/{export.pk}/"
    return {
        "id": export.pk,
        "status": export.status,
        "since": export.since.isoformat(),
        "until": export.until.isoformat(),
        "group_by": export.group_by,
        "filters": export.filters,
        "error": export.error,
        "status_url": base,
        "download_url": f"{base}download" if export.status == ExportStatus.DONE else None,
    }


class UsageExportCreateView(APIView):
    @extend_schema(
        request=UsageExportRequestSerializer,
        responses={202: ExportStatusSerializer},
        description="The fields of GET /api/usage/export.csv, in the body; an unknown field is refused (400).",
    )
    def post(self, request: Request) -> Response:
        # Only the tenant may come in the query: a filter left there would be ignored and widen the export.
        refuse_unknown_fields(request.query_params, known=["tenant"])
        body = _validated(UsageExportRequestSerializer, request.data)
        try:
            slug = body.get("tenant") or request.query_params.get("tenant", "")
            tenant = finance_tenant(user=request.user, slug=slug)
            params = export_params_parse(since=body["since"], until=body["until"], group_by=body.get("group_by"))
            filters = _usage_filters(body)
        except ExportError as error:
            return export_error_response(error)
        export = usage_export_create(tenant=tenant, user=request.user, params=params, filters=filters)
        usage_export_queue(export)
        export.refresh_from_db()
        return Response(_export_payload(export), status=status.HTTP_202_ACCEPTED)


def _visible_export(request: Request, export_id: int) -> UsageExport:
    return get_object_or_404(UsageExport.objects.restrict(request.user, Action.EXPORT), pk=export_id)


class UsageExportStatusView(APIView):
    @extend_schema(responses={200: ExportStatusSerializer})
    def get(self, request: Request, export_id: int) -> Response:
        return Response(_export_payload(_visible_export(request, export_id)))


class UsageExportDownloadView(APIView):
    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, export_id: int):
        export = _visible_export(request, export_id)
        if export.status != ExportStatus.DONE:
            raise Http404("The export is not ready.")
        filename = export.file_name.rsplit("/", 1)[-1].split("-", 1)[1]
        return stored_csv_response(request._request, export.file_name, filename=filename)
