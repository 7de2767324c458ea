"""Where alerts go, the alerts raised, each delivery attempt's outcome, and detected anomalies."""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from billing.models.budgets import Budget
from billing.models.ledger import COST_FIELD, CUSTOMER_MAX_LENGTH
from tenants.models import Team, Tenant
from tenants.scoping import TenantOwned, TenantScopedManager


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    SLACK = "slack", "Slack incoming webhook"
    WEBHOOK = "webhook", "Signed webhook (HMAC-SHA256)"
    SNS = "sns", "AWS SNS topic"


# Kinds whose target is a credential: anyone holding a Slack incoming webhook URL can post to the channel. A signed
# webhook's URL is not (the receiver checks the signature, and its secret is write-only), nor an address or an ARN.
CREDENTIAL_TARGET_KINDS = frozenset({ChannelKind.SLACK})


class AlertChannel(TenantOwned, models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alert_channels")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    target = models.CharField(max_length=1000, help_text="Email address, webhook URL, or SNS topic ARN.")
    signing_secret_encrypted = models.TextField(blank=True, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["tenant__slug", "name"]

    def __str__(self):
        return f"{self.tenant.slug}/{self.name} ({self.kind})"

    def audit_secret_fields(self) -> frozenset[str]:
        """The fields the audit log masks beyond those named as secrets (tenants.audit): a credential target."""
        return frozenset({"target"}) if self.kind in CREDENTIAL_TARGET_KINDS else frozenset()


class BudgetAlert(models.Model):
    """One per budget, period and threshold: the unique constraint is what makes alerting exactly-once. A customer
    budget's is raised by the first of its customers to reach the threshold in the period, and names it."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_key = models.CharField(max_length=16)
    threshold = models.PositiveSmallIntegerField()
    customer = models.CharField(max_length=CUSTOMER_MAX_LENGTH, blank=True, default="")
    spent_usd = models.DecimalField(**COST_FIELD)
    limit_usd = models.DecimalField(**COST_FIELD)
    refused = models.BooleanField(
        default=False,
        help_text="Raised by the first request the budget refused or downgraded in the period (its worst case would "
        "pass the limit), not by spend reaching the threshold.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager(tenant_path="budget__tenant")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_key", "threshold"], name="budget_alert_once_per_period")
        ]

    def __str__(self):
        return f"{self.budget} {self.period_key} {self.threshold}%"


class AnomalyMetric(models.TextChoices):
    SPEND = "spend", "Spend (USD)"
    TOKENS_PER_REQUEST = "tokens_per_request", "Tokens per request"
    CACHE_HIT_RATE = "cache_hit_rate", "Cache hit rate"
    ERROR_RATE = "error_rate", "Error rate"


class AnomalyWindow(models.TextChoices):
    HOUR = "hour", "Last hour"
    DAY = "day", "Last day"


class AnomalyDirection(models.TextChoices):
    SPIKE = "spike", "Spike"
    DROP = "drop", "Drop"


class Anomaly(models.Model):
    """A window whose metric lies far from its trailing robust baseline, with the numbers that said so."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="anomalies")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="anomalies")
    metric = models.CharField(max_length=32, choices=AnomalyMetric.choices)
    window = models.CharField(max_length=8, choices=AnomalyWindow.choices)
    window_end = models.DateTimeField()
    observed = models.DecimalField(**COST_FIELD)
    baseline_median = models.DecimalField(**COST_FIELD)
    baseline_mad = models.DecimalField(**COST_FIELD)
    score = models.DecimalField(max_digits=14, decimal_places=4)
    direction = models.CharField(max_length=8, choices=AnomalyDirection.choices)
    detected_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-detected_at"]
        verbose_name_plural = "anomalies"
        # Two partial constraints instead of nulls_distinct=False, which SQLite (the demo) cannot enforce.
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "team", "metric", "window", "window_end"],
                condition=models.Q(team__isnull=False),
                name="anomaly_once_per_window_team",
            ),
            models.UniqueConstraint(
                fields=["tenant", "metric", "window", "window_end"],
                condition=models.Q(team__isnull=True),
                name="anomaly_once_per_window_tenant",
            ),
        ]

    def __str__(self):
        who = self.team.slug if self.team_id else self.tenant.slug
        return f"{who} {self.metric} {self.direction} ({self.window} to {self.window_end:%Y-%m-%d %H:%M})"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed after all retries"


class AlertDelivery(models.Model):
    """One alert (budget threshold, anomaly or quality SLO breach) to one channel, with its attempts and last error."""

    budget_alert = models.ForeignKey(
        BudgetAlert, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    anomaly = models.ForeignKey(Anomaly, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries")
    quality_alert = models.ForeignKey(
        "billing.QualityAlert", on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    channel = models.ForeignKey(AlertChannel, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=8, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(
        default=timezone.now,
        help_text="When the send queued last is due (a retry's after its backoff). Pending well past it, the send's "
        "task was lost, and beat's sweep queues it again.",
    )

    objects = TenantScopedManager(tenant_path="channel__tenant")

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "alert deliveries"
        constraints = [
            models.CheckConstraint(
                condition=Q(budget_alert__isnull=False, anomaly__isnull=True, quality_alert__isnull=True)
                | Q(budget_alert__isnull=True, anomaly__isnull=False, quality_alert__isnull=True)
                | Q(budget_alert__isnull=True, anomaly__isnull=True, quality_alert__isnull=False),
                name="alert_delivery_one_subject",
            ),
            models.UniqueConstraint(fields=["budget_alert", "channel"], name="alert_delivery_once_per_budget_alert"),
            models.UniqueConstraint(fields=["anomaly", "channel"], name="alert_delivery_once_per_anomaly"),
            models.UniqueConstraint(fields=["quality_alert", "channel"], name="alert_delivery_once_per_quality_alert"),
        ]
        # The sweep's: pending deliveries by due time, a few among every delivery ever made.
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status=DeliveryStatus.PENDING),
                name="alert_delivery_pending_due",
            )
        ]

    def __str__(self):
        return f"{self.subject()} → {self.channel}"

    def subject(self):
        """The BudgetAlert, Anomaly or QualityAlert this delivery sends."""
        if self.budget_alert_id:
            return self.budget_alert
        return self.anomaly if self.anomaly_id else self.quality_alert
