"""Finance pages in the admin: CSV exports (a changelist action and a form), the KPI dashboard, monthly statements.

They hang off the ledger's admin (billing/usagerecord/finance/...). A superuser may pick any tenant; a staff
user only the tenants they are a member of (any role for the dashboard; owner, admin or finance for exports
and statements). A tenant outside that answers 404.
"""

from datetime import UTC, timedelta

from django import forms
from django.contrib import admin, messages
from django.core.validators import MaxValueValidator, MinValueValidator
from django.http import Http404, HttpResponse, HttpResponseBadRequest, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode

from billing.finance.dashboard import dashboard_build
from billing.finance.exports import (
    FIRST_DAY,
    LAST_DAY,
    ExportError,
    csv_streaming_response,
    export_max_days,
    export_params_parse,
    is_sync_exportable,
    request_csv_chunks,
    sync_export_max_days,
    usage_export_chunks,
    usage_export_create,
)
from billing.finance.rollups import usage_rollups_refresh_if_stale
from billing.finance.statements import month_start, statement_build, statement_csv
from billing.finance.tasks import usage_export_queue
from billing.finance.whatif import WhatIfRefused, whatif_replay
from billing.ledger.columns import ExportGrouping
from billing.ledger.selectors import tenant_zone
from billing.models import UsageRecord
from routing.models import RoutingPolicy
from tenants.admin import ReadOnlyScopedAdmin
from tenants.models import Team, Tenant
from tenants.permissions import Action
from tenants.selectors import tenant_named

DEFAULT_DASHBOARD_DAYS = 14
# The what-if page's windows, in days; the first is the default.
WHATIF_WINDOWS = (7, 30)


class ExportForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none())
    since = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}), help_text="Tenant time zone.")
    until = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}), help_text="Inclusive.")
    group_by = forms.MultipleChoiceField(
        choices=[choice for choice in ExportGrouping.choices],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked for one row per request.",
    )

    def __init__(self, *args, tenants, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            cleaned["params"] = export_params_parse(
                since=cleaned["since"], until=cleaned["until"], group_by=cleaned.get("group_by")
            )
        except ExportError as error:
            raise forms.ValidationError(error.message, code=error.code) from None
        return cleaned


class DashboardForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), required=False)
    # The days exports take: a tenant's day bounds overflow near date.max.
    since = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        validators=[MinValueValidator(FIRST_DAY), MaxValueValidator(LAST_DAY)],
    )
    until = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        validators=[MinValueValidator(FIRST_DAY), MaxValueValidator(LAST_DAY)],
    )
    team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False, empty_label="All teams")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = Tenant.objects.restrict(user, Action.VIEW)
        self.fields["team"].queryset = Team.objects.restrict(user, Action.VIEW).select_related("tenant")


def _bad_request(refusal: str) -> HttpResponseBadRequest:
    return HttpResponseBadRequest(refusal, content_type="text/plain; charset=utf-8")


def _days_refused(form: DashboardForm) -> str:
    return " ".join(f"{name}: {' '.join(form.errors[name])}" for name in ("since", "until") if name in form.errors)


class CustomerNamedFilter(admin.SimpleListFilter):
    """Rows that name an end customer or not; one customer's rows: search its exact id, or ?customer=<id>."""

    title = "end customer"
    parameter_name = "has_customer"

    def lookups(self, request, model_admin):
        return (("yes", "Names a customer"), ("no", "No customer"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(customer="")
        if self.value() == "no":
            return queryset.filter(customer="")
        return queryset


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyScopedAdmin):
    """The ledger, read-only for everyone: a usage record is written once by the gateway and never changed."""

    list_display = (
        "request_id",
        "created_at",
        "tenant",
        "team",
        "requested_model",
        "served_model",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "cost_usd",
        "http_status",
        "error_code",
        "cache_status",
        "kind",
        "customer",
    )
    list_filter = ("served_model", "http_status", "cache_status", "kind", CustomerNamedFilter)
    list_select_related = ("tenant", "team__tenant")
    date_hierarchy = "created_at"
    # A request's id finds its row and the rows of the calls made for it (a compression summary); an end customer's
    # exact id finds that customer's rows (the ledger's customer index).
    search_fields = ("request_id", "parent_request_id", "=customer")
    # The ledger grows without bound; skip the second, unfiltered count on every page.
    show_full_result_count = False

    actions = ("export_selected_csv",)
    change_list_template = "admin/billing/usagerecord/change_list.html"

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("finance/export/", wrap(self.export_view), name="billing_usage_export"),
            path("finance/dashboard/", wrap(self.dashboard_view), name="billing_usage_dashboard"),
            path("finance/statement/", wrap(self.statement_view), name="billing_usage_statement"),
            path("whatif/<int:policy_id>/", wrap(self.whatif_view), name="billing_policy_whatif"),
            *super().get_urls(),
        ]

    def _page_context(self, request, title: str) -> dict:
        return {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta}

    @admin.action(description="Export selected rows as CSV (full ledger precision)")
    def export_selected_csv(self, request, queryset):
        selected = queryset.restrict(request.user, Action.EXPORT)
        tenant_ids = set(selected.order_by().values_list("tenant_id", flat=True).distinct()[:2])
        if len(tenant_ids) != 1:
            self.message_user(request, "Select rows of exactly one tenant you may export.", messages.ERROR)
            return None
        tenant = Tenant.objects.for_tenant(tenant_ids.pop()).get()
        chunks = request_csv_chunks(selected.select_related(None), zone=tenant_zone(tenant=tenant))
        stamp = timezone.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return csv_streaming_response(request, chunks, filename=f"usage-{tenant.slug}-selected-{stamp}.csv")

    def export_view(self, request):
        tenants = Tenant.objects.restrict(request.user, Action.EXPORT)
        form = ExportForm(request.POST or None, tenants=tenants)
        if request.method == "POST" and form.is_valid():
            tenant, params = form.cleaned_data["tenant"], form.cleaned_data["params"]
            if is_sync_exportable(params):
                chunks = usage_export_chunks(tenant=tenant, params=params)
                return csv_streaming_response(request, chunks, filename=params.filename(tenant))
            export = usage_export_create(tenant=tenant, user=request.user, params=params)
            usage_export_queue(export)
            self.message_user(
                request,
                f"{params.days} days is more than the {sync_export_max_days()} days streamed directly; export "
                f"{export.pk} is being written. Download it from /api/usage/exports/{export.pk}/ when ready.",
                messages.INFO,
            )
        context = {**self._page_context(request, "Export usage as CSV"), "form": form}
        return TemplateResponse(request, "admin/billing/usage_export.html", context)

    def dashboard_view(self, request):
        form = DashboardForm(request.GET or None, user=request.user)
        if form.is_bound and not form.is_valid():
            if {"since", "until"} & set(form.errors):
                return _bad_request(_days_refused(form))
            raise Http404("Unknown tenant or team.")
        data = form.cleaned_data if form.is_bound else {}
        tenant = data.get("tenant") or form.fields["tenant"].queryset.first()
        if tenant is None:
            raise Http404("You are not a member of any tenant.")
        team = data.get("team")
        if team is not None and team.tenant_id != tenant.pk:
            raise Http404("Unknown team.")
        until = data.get("until") or timezone.now().astimezone(tenant_zone(tenant=tenant)).date()
        since = data.get("since") or max(FIRST_DAY, until - timedelta(days=DEFAULT_DASHBOARD_DAYS - 1))
        if since > until:
            since, until = until, since
        if (until - since).days + 1 > export_max_days():
            return _bad_request(
                f"A dashboard covers at most {export_max_days()} days, as an export does; this asks for more."
            )
        usage_rollups_refresh_if_stale()
        dashboard = dashboard_build(tenant=tenant, since=since, until=until, team=team)
        form = DashboardForm(
            initial={"tenant": tenant, "since": since, "until": until, "team": team}, user=request.user
        )
        context = {
            **self._page_context(request, f"KPI dashboard: {tenant.name}"),
            "form": form,
            "dashboard": dashboard,
            "chart_data": dashboard.chart_data(),
        }
        return TemplateResponse(request, "admin/billing/dashboard.html", context)

    def statement_view(self, request):
        tenants = Tenant.objects.restrict(request.user, Action.EXPORT)
        tenant_slug = request.GET.get("tenant")
        tenant = tenant_named(tenants=tenants, slug=tenant_slug) if tenant_slug else tenants.first()
        if tenant is None:
            raise Http404("You may not see any tenant's statement.")
        today = timezone.now().astimezone(tenant_zone(tenant=tenant)).date()
        try:
            month = month_start(request.GET.get("month") or today)
        except ValueError:
            return _bad_request(f"Give the month as YYYY-MM, from {FIRST_DAY:%Y-%m} to {LAST_DAY:%Y-%m}.")
        statement = statement_build(tenant=tenant, month=month)
        if request.GET.get("format") == "csv":
            response = HttpResponse(statement_csv(statement), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="statement-{tenant.slug}-{month:%Y-%m}.csv"'
            return response
        context = {
            **self._page_context(request, f"Statement {tenant.name}, {month:%B %Y}"),
            "statement": statement,
            "tenants": tenants,
            "month_value": f"{month:%Y-%m}",
            "csv_url": reverse("admin:billing_usage_statement")
            + "?"
            + urlencode({"tenant": tenant.slug, "month": f"{month:%Y-%m}", "format": "csv"}),
        }
        return TemplateResponse(request, "admin/billing/statement.html", context)

    def whatif_view(self, request, policy_id: int):
        """The policy's draft replayed over the tenant's recent requests (billing.finance.whatif); publishes nothing."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        policy = (
            RoutingPolicy.objects.restrict(request.user, Action.VIEW)
            .select_related("tenant", "live_version")
            .filter(pk=policy_id)
            .first()
        )
        if policy is None:
            raise Http404("no routing policy")
        days = int(request.GET["days"]) if request.GET.get("days") in {str(days) for days in WHATIF_WINDOWS} else None
        days = days or WHATIF_WINDOWS[0]
        report, refusal = None, []
        try:
            report = whatif_replay(tenant=policy.tenant, days=days)
        except WhatIfRefused as refused:
            refusal = refused.reasons
        context = {
            **self._page_context(request, f"What if {policy.tenant.slug} published its draft?"),
            "policy": policy,
            "days": days,
            "windows": WHATIF_WINDOWS,
            "report": report,
            "refusal": refusal,
        }
        return TemplateResponse(request, "admin/billing/whatif.html", context)
