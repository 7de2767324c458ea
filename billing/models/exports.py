from django.conf import settings
from django.db import models

from tenants.models import Tenant
from tenants.scoping import TenantScopedManager


class ExportStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class UsageExport(models.Model):
    """A CSV export too large to stream synchronously, written to storage by a Celery task."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage_exports")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    since = models.DateField()
    until = models.DateField()
    group_by = models.CharField(max_length=64, blank=True, help_text="Comma-separated groupings; blank: ledger rows.")
    filters = models.JSONField(
        default=dict,
        blank=True,
        help_text="The usage filters given (team, key, model, status, cache, customer), by name; {}: every row.",
    )
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.PENDING)
    file_name = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"export {self.pk} of {self.tenant_id} {self.since}..{self.until}"
