from django.db import models
from django.db.models import Q

from routing.models import ModelPrice
from tenants.models import ApiKey, Team, Tenant
from tenants.scoping import TenantScopedManager, TenantScopedQuerySet

COST_FIELD = {"max_digits": 20, "decimal_places": 10}
# The longest end-customer id a request may name (the OpenAI `user` field or the x-llmops-customer header).
CUSTOMER_MAX_LENGTH = 256
# The tenant's own customers: ledger rows that name one, for grouping by customer and reading one customer's rows.
CUSTOMER_INDEX = models.Index(
    fields=["tenant", "customer", "created_at"], condition=~Q(customer=""), name="usage_tenant_customer"
)
ROUTING_HINT_MAX_LENGTH = 128


class CacheStatus(models.TextChoices):
    MISS = "miss", "Miss"
    HIT_EXACT = "hit-exact", "Exact hit"
    HIT_SEMANTIC = "hit-semantic", "Semantic hit"
    BYPASS = "bypass", "Bypass"


class UsageKind(models.TextChoices):
    REQUEST = "request", "Request"
    COMPRESSION_SUMMARY = "compression_summary", "Compression summary"
    # The semantic cache's embedding of the request's prompt, where its embedder is a provider's paid /embeddings.
    CACHE_EMBEDDING = "cache_embedding", "Semantic cache embedding"
    # An upstream attempt of the request that failed but that the provider may bill (an answer the gateway could not
    # use, a timeout once the request was sent): charged at the gateway's own count, on the model it was made to.
    FAILED_ATTEMPT = "failed_attempt", "Failed attempt"
    # A shadow evaluation's call (reference answer or LLM judge): charged to the tenant's evaluation budget, never
    # counted as product traffic, spend against product budgets, or savings.
    EVALUATION = "evaluation", "Shadow evaluation"


# The rows that are requests, not calls the gateway made for one: what reports count as requests and errors (their
# cost and tokens are summed from every row).
REQUEST_ROWS = Q(kind=UsageKind.REQUEST)
# The tenant's product traffic: every row but the shadow evaluations' calls, which reports show as evaluation spend of
# their own and never in product spend, savings or usage.
PRODUCT_ROWS = ~Q(kind=UsageKind.EVALUATION)


class ImmutableRowError(Exception):
    pass


class LedgerQuerySet(TenantScopedQuerySet):
    """Append-only: rows are inserted, never changed, and removed only by the retention purge
    (billing.ledger.services.usage_records_purge). On Postgres a trigger refuses the rest too, raw SQL included."""

    def update(self, **kwargs):
        raise ImmutableRowError("usage records are immutable")

    def delete(self):
        raise ImmutableRowError("usage records are removed only by the retention purge (manage.py ledger_purge)")

    def retention_purge(self) -> int:
        """Delete these rows. Only for billing.ledger.services.usage_records_purge, which lets the trigger allow it."""
        return super().delete()[0]


class UsageRecord(models.Model):
    """One row per request that reached the pipeline, and one per upstream call the gateway made on a request's
    behalf (a compression summary, a failed attempt the provider may bill, a semantic-cache embedding), linked to it
    by ``parent_request_id``. Written once, never changed."""

    request_id = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, choices=UsageKind.choices, default=UsageKind.REQUEST)
    parent_request_id = models.CharField(
        max_length=64, blank=True, help_text="The request this call was made for; blank for a request."
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_records")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="usage_records")
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="usage_records")
    endpoint = models.CharField(max_length=64, default="/v1/chat/completions")
    requested_model = models.CharField(max_length=128, blank=True)
    served_model = models.CharField(max_length=128, blank=True)
    is_stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(
        default=0, help_text="Prompt tokens written to the provider's prompt cache (Anthropic, Bedrock)."
    )
    completion_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(
        default=False, help_text="The provider returned no usage; tokens were counted by the gateway."
    )
    cost_usd = models.DecimalField(**COST_FIELD, default=0)
    price_version = models.ForeignKey(
        ModelPrice,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        # No index, which every ledger insert would pay for: no query filters the ledger by price version, and a
        # version is never deleted (routing.ModelPrice.model is PROTECT, the admin deletes no model), so neither
        # Django's deletion collector nor Postgres's foreign-key check ever has to search the ledger for one.
        db_index=False,
        help_text="The served model's prices the cost was computed at; empty when no model served the request, and "
        "on rows written before prices were versioned (migration billing 0006): their cost stands, its prices are "
        "not recorded.",
    )
    upstream_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    total_latency_ms = models.PositiveIntegerField(default=0)
    cache_status = models.CharField(max_length=16, choices=CacheStatus.choices, default=CacheStatus.MISS)
    route = models.CharField(
        max_length=128, blank=True, help_text="The routing rule that decided, `score`, or `direct`."
    )
    routed_to_large = models.BooleanField(default=False)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    # The request's routing features, as routing saw them: what a replay of the request under another policy reads
    # when its prompt was not logged (billing.finance.whatif). has_tools is empty on rows written before they were
    # recorded (migration billing 0008) and on requests that never reached routing: their features are unknown.
    # The database defaults let a process of the previous release go on inserting rows while the new one rolls out.
    task_type = models.CharField(
        max_length=ROUTING_HINT_MAX_LENGTH,
        blank=True,
        default="",
        db_default="",
        help_text="metadata.task_type or x-llmops-task-type, as sent (cut to 128 characters).",
    )
    user_tier = models.CharField(
        max_length=ROUTING_HINT_MAX_LENGTH,
        blank=True,
        default="",
        db_default="",
        help_text="metadata.user_tier or x-llmops-user-tier, as sent (cut to 128 characters).",
    )
    has_tools = models.BooleanField(
        null=True, blank=True, help_text="The request offered tools; empty when its routing features are unknown."
    )
    has_images = models.BooleanField(null=True, blank=True, help_text="The request carried images.")
    difficulty_score = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The alias's difficulty score (0-100), when routing computed one."
    )
    prompt_tokens_before_compression = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens_after_compression = models.PositiveIntegerField(null=True, blank=True)
    injection_flagged = models.BooleanField(default=False)
    tags = models.JSONField(default=list, blank=True, help_text="From the x-llmops-tags header, sorted, no duplicates.")
    customer = models.CharField(
        max_length=CUSTOMER_MAX_LENGTH,
        blank=True,
        default="",
        # Also the database's default, so a process of the previous release can still insert rows while it drains.
        db_default="",
        help_text="The tenant's end customer: the x-llmops-customer header, else the request's OpenAI `user` field; "
        "empty for none.",
    )
    saved_cache_usd = models.DecimalField(**COST_FIELD, default=0)
    saved_routing_usd = models.DecimalField(
        **COST_FIELD,
        default=0,
        help_text="What the requested (or alias's large) model would have cost, minus the cost.",
    )
    saved_compression_usd = models.DecimalField(
        **COST_FIELD,
        default=0,
        help_text="Prompt tokens removed by compression, at the served model's input price, minus what the summary "
        "call cost (negative when the summary cost more than it saved).",
    )
    saved_batch_usd = models.DecimalField(**COST_FIELD, default=0)
    # db_default: a drainer still on the code from before this column inserts rows without it (docs/runbook.md).
    saved_provider_cache_usd = models.DecimalField(
        **COST_FIELD,
        default=0,
        db_default=0,
        help_text="The prompt at the input price, minus what its cache reads and writes cost at the cache prices "
        "(negative for a request that only wrote to the provider's prompt cache).",
    )
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Upstream calls made, retries and fallbacks included."
    )
    http_status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(db_index=True)

    objects = TenantScopedManager.from_queryset(LedgerQuerySet)()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="usage_tenant_created"), CUSTOMER_INDEX]

    def __str__(self):
        return self.request_id

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ImmutableRowError("usage records are immutable")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableRowError("usage records are immutable")
