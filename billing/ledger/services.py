from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction

from billing.models import CacheStatus, UsageKind, UsageRecord
from tenants.models import Tenant


@dataclass(slots=True)
class UsageEvent:
    """What the gateway knows about one request (or one call made on a request's behalf) when it is done with it."""

    request_id: str
    tenant_id: int
    team_id: int
    api_key_id: int
    created_at: datetime
    http_status: int
    endpoint: str = "/v1/chat/completions"
    requested_model: str = ""
    served_model: str = ""
    is_stream: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: Decimal = field(default_factory=Decimal)
    upstream_latency_ms: int | None = None
    total_latency_ms: int = 0
    cache_status: str = CacheStatus.MISS
    error_code: str = ""
    route: str = ""
    routed_to_large: bool = False
    policy_version: int | None = None
    prompt_tokens_before_compression: int | None = None
    prompt_tokens_after_compression: int | None = None
    injection_flagged: bool = False
    attempts: int = 0
    tags: list[str] = field(default_factory=list)
    saved_cache_usd: Decimal = field(default_factory=Decimal)
    saved_routing_usd: Decimal = field(default_factory=Decimal)
    saved_compression_usd: Decimal = field(default_factory=Decimal)
    saved_batch_usd: Decimal = field(default_factory=Decimal)
    kind: str = UsageKind.REQUEST
    parent_request_id: str = ""


def usage_record_create(*, event: UsageEvent) -> None:
    """Write the ledger row for a request in one INSERT. Idempotent on request_id: a replay changes nothing."""
    UsageRecord.objects.bulk_create([UsageRecord(**asdict(event))], ignore_conflicts=True)


@transaction.atomic
def usage_records_purge(*, before: datetime, tenant: Tenant | None = None) -> int:
    """The retention purge, the one way ledger rows leave: those created before `before` (of one tenant, or all).

    On Postgres the append-only trigger lets the DELETE through only in a transaction that set llmops.ledger_purge.
    Rollups already built keep their totals. Returns how many rows were deleted.
    """
    records = UsageRecord.objects.filter(created_at__lt=before)
    if tenant is not None:
        records = records.for_tenant(tenant)
    if connection.vendor != "postgresql":
        return records.retention_purge()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL llmops.ledger_purge = 'on'")
        try:
            return records.retention_purge()
        finally:
            # Off again at once, also when the caller's transaction goes on after the purge.
            cursor.execute("SET LOCAL llmops.ledger_purge = 'off'")
