"""Exports too long to stream while the client waits: a Celery task writes the CSV to storage."""

import tempfile

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from billing.finance.exports import ExportParams, export_params_parse, usage_export_chunks
from billing.models import ExportStatus, UsageExport
from tenants.models import Tenant


def usage_export_request(*, tenant: Tenant, user, params: ExportParams) -> UsageExport:
    """Record an export and queue the task that writes it, once the row is committed."""
    from billing.finance.tasks import usage_export_write_task

    export = UsageExport.objects.create(
        tenant=tenant, requested_by=user, since=params.since, until=params.until, group_by=params.group_by_text
    )
    transaction.on_commit(lambda: usage_export_write_task.delay(export.pk))
    return export


def usage_export_write(*, export: UsageExport) -> UsageExport:
    """Write the export's CSV to storage under a name only the export row knows; a failure is recorded on the row."""
    params = export_params_parse(since=export.since, until=export.until, group_by=export.group_by)
    UsageExport.objects.filter(pk=export.pk).update(status=ExportStatus.RUNNING)
    name = f"usage-exports/{export.tenant_id}/{export.pk}-{params.filename(export.tenant)}"
    try:
        # Spooled to a local temporary file first, so any storage backend (S3 included) gets one upload.
        with tempfile.TemporaryFile() as spool:
            for chunk in usage_export_chunks(tenant=export.tenant, params=params):
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
