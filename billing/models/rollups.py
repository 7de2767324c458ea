"""Hourly and daily aggregates of the ledger, so dashboards never scan the raw ledger.

A rollup row is the exact sum of the ledger rows in its bucket for one team and served model:
rebuilding a bucket from the ledger always gives the same row, which makes the refresh idempotent. Its totals are the
product traffic's (billing.models.PRODUCT_ROWS); the shadow evaluations' calls are summed apart, in
`evaluation_cost_usd`.
"""

from django.db import models

from billing.models.ledger import COST_FIELD, CUSTOMER_MAX_LENGTH
from tenants.models import Team, Tenant
from tenants.scoping import TenantScopedManager

# Upper edges, in milliseconds, of the latency histogram kept per bucket; one more count holds everything slower.
LATENCY_BUCKET_EDGES_MS = (50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000)


class UsageRollupFields(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    served_model = models.CharField(max_length=128, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    upstream_errors = models.PositiveIntegerField(default=0)
    cache_hits = models.PositiveIntegerField(default=0)
    routed_to_large = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(**COST_FIELD, default=0)
    saved_cache_usd = models.DecimalField(**COST_FIELD, default=0)
    saved_routing_usd = models.DecimalField(**COST_FIELD, default=0)
    saved_compression_usd = models.DecimalField(**COST_FIELD, default=0)
    saved_batch_usd = models.DecimalField(**COST_FIELD, default=0)
    # db_default: a worker still on the code from before this column rebuilds rollups without it (docs/runbook.md).
    saved_provider_cache_usd = models.DecimalField(**COST_FIELD, default=0, db_default=0)
    latency_sum_ms = models.BigIntegerField(default=0)
    # db_default: a worker still on the code from before this column rebuilds rollups without it (docs/runbook.md).
    evaluation_cost_usd = models.DecimalField(
        **COST_FIELD,
        default=0,
        db_default=0,
        help_text="What the bucket's shadow evaluation calls cost (ledger rows of kind evaluation), in no other total.",
    )
    latency_histogram = models.JSONField(
        default=list, help_text="Request counts per latency bucket, by LATENCY_BUCKET_EDGES_MS, plus one overflow."
    )

    objects = TenantScopedManager()

    class Meta:
        abstract = True


class UsageRollupHourly(UsageRollupFields):
    bucket_start = models.DateTimeField(help_text="Start of the UTC hour.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "bucket_start", "team", "served_model"], name="usage_rollup_hourly_unique"
            )
        ]

    def __str__(self):
        return f"{self.tenant_id} {self.bucket_start:%Y-%m-%d %H}h {self.served_model}"


class UsageRollupDaily(UsageRollupFields):
    day = models.DateField(help_text="Calendar day in the tenant's time zone.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "day", "team", "served_model"], name="usage_rollup_daily_unique")
        ]

    def __str__(self):
        return f"{self.tenant_id} {self.day} {self.served_model}"


class UsageCustomerRollupHourly(models.Model):
    """The ledger rows that name an end customer, summed per UTC hour, team and customer: the dashboard's top
    customers, without reading the ledger. Rebuilt with the hourly rollups, from the same hours."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    bucket_start = models.DateTimeField(help_text="Start of the UTC hour.")
    customer = models.CharField(max_length=CUSTOMER_MAX_LENGTH)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(**COST_FIELD, default=0)

    objects = TenantScopedManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "bucket_start", "team", "customer"], name="usage_customer_rollup_unique"
            )
        ]

    def __str__(self):
        return f"{self.tenant_id} {self.bucket_start:%Y-%m-%d %H}h {self.customer}"


class RollupCursor(models.Model):
    """The highest ledger id already folded into the rollups; the refresh rebuilds only buckets touched since."""

    name = models.CharField(max_length=64, unique=True)
    last_usage_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.name} @ {self.last_usage_id}"
