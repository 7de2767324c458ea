"""Batches and async jobs in the admin, per tenant: progress, cost and the savings of the batch discount.

Read-only: batches and jobs are created through the API by a tenant's key, and changed only by the workers.
"""

from django.contrib import admin

from llmops.gateway.batches.models import Batch, Job
from tenants.admin import ReadOnlyScopedAdmin, TenantListFilter


@admin.register(Batch)
class BatchAdmin(ReadOnlyScopedAdmin):
    list_display = ("id", "tenant", "team", "status", "progress", "cost_usd", "saved_batch_usd", "created_at")
    list_filter = (("tenant", TenantListFilter), "status")
    list_select_related = ("tenant", "team")
    search_fields = ("id",)
    fields = (
        "id",
        "tenant",
        "team",
        "api_key",
        "status",
        "endpoint",
        "completion_window",
        "metadata",
        "input_file",
        "output_file",
        "error_file",
        "total_count",
        "completed_count",
        "failed_count",
        "cost_usd",
        "saved_batch_usd",
        "provider_batches",
        "errors",
        "created_at",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "cancelled_at",
        "expired_at",
        "expires_at",
    )
    readonly_fields = fields

    @admin.display(description="done / total")
    def progress(self, batch: Batch) -> str:
        return f"{batch.completed_count + batch.failed_count} / {batch.total_count} ({batch.failed_count} failed)"


@admin.register(Job)
class JobAdmin(ReadOnlyScopedAdmin):
    list_display = ("id", "tenant", "team", "status", "status_code", "cost_usd", "webhook_state", "created_at")
    list_filter = (("tenant", TenantListFilter), "status", "webhook_state")
    list_select_related = ("tenant", "team")
    search_fields = ("id", "request_id")
    fields = (
        "id",
        "tenant",
        "team",
        "api_key",
        "status",
        "status_code",
        "request_id",
        "cost_usd",
        "callback_url",
        "webhook_state",
        "webhook_attempts",
        "webhook_last_error",
        "webhook_delivered_at",
        "body",
        "result",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
