"""Files, batches and async jobs: work that can wait, run by Celery workers through the gateway pipeline.

Ids are OpenAI's (``file-…``, ``batch_…``), so the official SDK's files and batches calls work unchanged.
A file, batch or job belongs to the key that created it; its tenant scopes every read.
"""

import secrets

from django.db import models

from tenants.models import ApiKey, Team, Tenant
from tenants.scoping import TenantScopedManager

COST_FIELD = {"max_digits": 20, "decimal_places": 10}


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


def new_job_id() -> str:
    return f"job_{secrets.token_hex(12)}"


class FilePurpose(models.TextChoices):
    BATCH = "batch", "Batch input"
    BATCH_OUTPUT = "batch_output", "Batch output"


class File(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_file_id, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="files")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="files")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="files")
    purpose = models.CharField(max_length=16, choices=FilePurpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.PositiveBigIntegerField()
    storage_key = models.CharField(max_length=500, help_text="Path under MEDIA_ROOT, or the S3 object key.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="file_tenant_created")]

    def __str__(self):
        return f"{self.id} ({self.filename})"


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


BATCH_FINISHED = (BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


class Batch(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_batch_id, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="batches")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="batches")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="batches")
    # Files may be deleted while the batch keeps naming them, as OpenAI's do: no database constraint.
    input_file = models.ForeignKey(File, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    output_file = models.ForeignKey(
        File, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    error_file = models.ForeignKey(
        File, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    endpoint = models.CharField(max_length=64)
    completion_window = models.CharField(max_length=8, default="24h")
    metadata = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=BatchStatus.choices, default=BatchStatus.VALIDATING)
    errors = models.JSONField(null=True, blank=True, help_text="Validation errors: [{code, message, param, line}].")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    total_count = models.PositiveIntegerField(default=0)
    completed_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    # {"<provider>:<upstream model>": {"provider", "model", "batch_id", "input_file_id", "status", "cancel_sent",
    # "lines": {custom_id: {"served", "route", "hold"}}}} for lines delegated to a provider's batch endpoint, one
    # provider batch per upstream model; a line's "hold" is its budget reservation (batches/holds.py).
    provider_batches = models.JSONField(default=dict, blank=True)
    cost_usd = models.DecimalField(**COST_FIELD, default=0)
    saved_batch_usd = models.DecimalField(**COST_FIELD, default=0)
    # One runner at a time: it holds the lease and renews it; a lease left to lapse means the runner died.
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(
        max_length=32, blank=True, help_text="The runner holding the lease: one whose lease was taken over renews none."
    )
    recheck_at = models.DateTimeField(null=True, blank=True, help_text="When the next look at this batch is due.")
    idempotency_key = models.CharField(
        max_length=255, blank=True, help_text="The create request's Idempotency-Key header: a retry gets this batch."
    )

    objects = TenantScopedManager()

    class Meta:
        verbose_name_plural = "batches"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="batch_tenant_created"),
            models.Index(fields=["status"], name="batch_status"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "api_key", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="batch_idempotency_key_unique",
            )
        ]

    def __str__(self):
        return self.id


class LineStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    DELEGATED = "delegated"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


LINE_FINISHED = (LineStatus.SUCCEEDED, LineStatus.FAILED, LineStatus.CANCELLED)


class BatchLine(models.Model):
    """One request of a batch. Claimed by a status change, recorded once: the unit of exactly-once."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    custom_id = models.CharField(max_length=512)
    line_number = models.PositiveIntegerField()
    body = models.JSONField()
    status = models.CharField(max_length=16, choices=LineStatus.choices, default=LineStatus.PENDING)
    attempt = models.PositiveSmallIntegerField(default=0, help_text="Runs recorded as a transient failure.")
    claimed_at = models.DateTimeField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True, help_text="The ledger row of the run recorded here.")
    provider = models.CharField(max_length=64, blank=True, help_text="Where the line was delegated, if it was.")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager(tenant_path="batch__tenant")

    class Meta:
        ordering = ["batch", "line_number"]
        constraints = [models.UniqueConstraint(fields=["batch", "custom_id"], name="batch_line_custom_id_unique")]
        indexes = [models.Index(fields=["batch", "status"], name="batch_line_status")]

    def __str__(self):
        return f"{self.batch_id}:{self.custom_id}"


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class WebhookState(models.TextChoices):
    NONE = "none", "No callback"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Job(models.Model):
    """One chat completion run in the background, its answer kept for GET and sent to a callback URL."""

    id = models.CharField(primary_key=True, max_length=40, default=new_job_id, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="jobs")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="jobs")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="jobs")
    body = models.JSONField()
    callback_url = models.URLField(max_length=2000, blank=True)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    request_id = models.CharField(max_length=64, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    cost_usd = models.DecimalField(**COST_FIELD, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    webhook_state = models.CharField(max_length=16, choices=WebhookState.choices, default=WebhookState.NONE)
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    webhook_last_error = models.CharField(max_length=500, blank=True)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    call_in_flight = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="The running run's upstream call while it may be under way: what it holds against the budgets and "
        "what its prompt costs, for the next run to release and charge should its worker die.",
    )

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="job_tenant_created")]

    def __str__(self):
        return self.id


class JobWebhookSecret(models.Model):
    """The tenant's key for signing job webhooks (HMAC-SHA256), stored encrypted like provider credentials."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="job_webhook_secret")
    secret_encrypted = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    def __str__(self):
        return f"webhook secret of {self.tenant_id}"
