from django.contrib import admin

from billing.models import UsageRecord
from tenants.admin import ReadOnlyScopedAdmin


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
    )
    list_filter = ("served_model", "http_status", "cache_status", "kind")
    list_select_related = ("tenant", "team__tenant")
    date_hierarchy = "created_at"
    # A request's id finds its row and the rows of the calls made for it (a compression summary).
    search_fields = ("request_id", "parent_request_id")
    # The ledger grows without bound; skip the second, unfiltered count on every page.
    show_full_result_count = False


import billing.admin_budgets  # noqa: E402  (registers the budget and alert admin)
import billing.admin_finance  # noqa: E402, F401  (finance exports, KPI dashboard and statements)
