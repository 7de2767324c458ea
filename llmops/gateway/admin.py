"""Batches and async jobs in the admin, per tenant: progress, cost and the savings of the batch discount.

Read-only: batches and jobs are created through the API by a tenant's key, and changed only by the workers.
"""

import json

from django.contrib import admin
from django.db.models.constants import LOOKUP_SEP
from django.utils.html import format_html

from core.redaction import redact, redact_value
from llmops.gateway.batches.models import Batch, Job
from tenants.admin import ReadOnlyScopedAdmin, TenantListFilter, request_access
from tenants.permissions import Action

# What the tenant's users asked and were told, and where the answer was sent: for those who may read its answers.
ANSWER_FIELDS = ("body", "result", "callback_url")


def redacted_json(value) -> str:
    return format_html("<pre>{}</pre>", json.dumps(redact_value(value), indent=2, ensure_ascii=False))


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
    # Which providers and upstream models served the lines: the platform's, hidden from members as in the catalog.
    platform_fields = ("provider_batches",)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if request.user.is_superuser:
            return fields
        return [name for name in fields if name not in self.platform_fields]

    def lookup_allowed(self, lookup, value, request):
        if not request.user.is_superuser and lookup.split(LOOKUP_SEP, 1)[0] in self.platform_fields:
            return False
        return super().lookup_allowed(lookup, value, request)

    @admin.display(description="done / total")
    def progress(self, batch: Batch) -> str:
        return f"{batch.completed_count + batch.failed_count} / {batch.total_count} ({batch.failed_count} failed)"


@admin.register(Job)
class JobAdmin(ReadOnlyScopedAdmin):
    """Every member follows a job's progress; its request, answer and callback URL are shown, redacted, only to the
    tenant's owners and admins, who may read its answers."""

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
        "shown_callback_url",
        "webhook_state",
        "webhook_attempts",
        "webhook_last_error",
        "webhook_delivered_at",
        "shown_body",
        "shown_result",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
    answer_fields = ("shown_body", "shown_result", "shown_callback_url")

    def may_read_every_answer(self, request) -> bool:
        """Whether every job the changelist may list is one whose answers the user may read: only then may the list be
        filtered by them, since which rows match a fragment would tell a prompt one guess at a time."""
        access = request_access(request)
        return access.is_superuser or all(access.allows(Action.VIEW_ANSWERS, tenant_id) for tenant_id in access.roles)

    def lookup_allowed(self, lookup, value, request):
        if lookup.split(LOOKUP_SEP, 1)[0].startswith(ANSWER_FIELDS) and not self.may_read_every_answer(request):
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is not None and self.allows(request, Action.VIEW_ANSWERS, obj):
            return fields
        return [name for name in fields if name not in self.answer_fields]

    # Redacted on display, as cached answers are: the job keeps the request as sent, to run it.
    @admin.display(description="Callback URL (redacted)")
    def shown_callback_url(self, job: Job) -> str:
        return redact(job.callback_url)

    @admin.display(description="Body (redacted)")
    def shown_body(self, job: Job) -> str:
        return redacted_json(job.body)

    @admin.display(description="Result (redacted)")
    def shown_result(self, job: Job) -> str:
        return "—" if job.result is None else redacted_json(job.result)
