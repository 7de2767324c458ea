"""Celery tasks for finance: rollups, async exports, statements. Thin: ids in, load, call one service.

Services do not import this module: the views that record an export queue its writing (usage_export_queue)."""

from datetime import timedelta

from botocore.exceptions import BotoCoreError, ClientError
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.finance.cloudwatch import rollups_cloudwatch_publish_closed_hours
from billing.finance.exports import usage_export_write
from billing.finance.rollups import usage_rollups_rebuild_recent, usage_rollups_refresh, usage_rollups_rezone
from billing.finance.statements import month_start, statement_month_final, statement_push_to_s3
from billing.models import UsageExport
from core.task_retries import retry_or_run_now
from tenants.models import Tenant
from tenants.selectors import tenants_active


# The name predates this module; a message beat sent under it before a deploy still runs.
@shared_task(name="billing.tasks_finance.usage_rollups_refresh_task")
def usage_rollups_refresh_task() -> int:
    """Every minute (beat). While another writer holds the rollups' lock (the nightly rebuild, a rezone) it does
    nothing rather than hold a worker the alert tasks need: the ledger rows it skipped stay past the cursor, for the
    next run."""
    return usage_rollups_refresh(wait=False)


# The name predates this module; a message beat sent under it before a deploy still runs.
@shared_task(name="billing.tasks_finance.usage_rollups_rebuild_recent_task")
def usage_rollups_rebuild_recent_task() -> int:
    return usage_rollups_rebuild_recent(days=2)


# Named as tenants.services.tenant_update names it, by this name rather than by import: it must not move.
@shared_task(name="billing.finance.tasks.usage_rollups_rezone_task")
def usage_rollups_rezone_task(tenant_id: int) -> int:
    """Queued when a tenant's time zone changes: its daily rollups move to the days of the new zone."""
    return usage_rollups_rezone(tenant=Tenant.objects.for_tenant(tenant_id).get())


# The name predates this module; a message beat sent under it before a deploy still runs.
@shared_task(name="billing.tasks_finance.rollups_cloudwatch_publish_task")
def rollups_cloudwatch_publish_task() -> int:
    """Hourly from beat when LLMOPS_CLOUDWATCH_NAMESPACE is set."""
    return rollups_cloudwatch_publish_closed_hours(namespace=settings.LLMOPS_CLOUDWATCH_NAMESPACE, now=timezone.now())


def usage_export_queue(export: UsageExport) -> None:
    """Queue the writing of an export once the transaction that recorded it commits, so the task finds its row."""
    transaction.on_commit(lambda: usage_export_write_task.delay(export.pk))


# The name predates the move into this package; tasks already queued under it still run.
@shared_task(name="billing.tasks_finance.usage_export_write_task")
def usage_export_write_task(export_id: int) -> None:
    # Unscoped, reviewed: the id comes from usage_export_request, which queued it for the requester's tenant.
    usage_export_write(export=UsageExport.objects.unscoped().select_related("tenant").get(pk=export_id))


# The name predates this module; a message beat sent under it before a deploy still runs.
@shared_task(name="billing.tasks_finance.statements_push_task")
def statements_push_task() -> int:
    """On the 2nd (beat): push last month's statement of every active tenant whose month has ended in its time zone
    (statement_month_final) to S3, when a bucket is configured; returns how many were queued."""
    bucket = settings.LLMOPS_STATEMENTS_BUCKET
    if not bucket:
        return 0
    now = timezone.now()
    last_month = (now.date().replace(day=1) - timedelta(days=1)).replace(day=1)
    final = [tenant for tenant in tenants_active() if statement_month_final(tenant=tenant, month=last_month, now=now)]
    for tenant in final:
        statement_push_task.delay(tenant.pk, last_month.isoformat())
    return len(final)


# The name predates the move into this package; tasks already queued under it still run.
@shared_task(name="billing.tasks_finance.statement_push_task", bind=True, max_retries=5)
def statement_push_task(self, tenant_id: int, month: str) -> str | None:
    try:
        return statement_push_to_s3(
            tenant=Tenant.objects.for_tenant(tenant_id).get(),
            month=month_start(month),
            bucket=settings.LLMOPS_STATEMENTS_BUCKET,
        )
    except (BotoCoreError, ClientError) as error:
        return retry_or_run_now(self, error, countdown=60 * 2**self.request.retries)
