from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal

from billing.models import CacheStatus, UsageKind, UsageRecord


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
