from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal

from billing.models import CacheStatus, UsageRecord


@dataclass(slots=True)
class UsageEvent:
    """What the gateway knows about one request when it is done with it."""

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
    completion_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: Decimal = field(default_factory=Decimal)
    upstream_latency_ms: int | None = None
    total_latency_ms: int = 0
    cache_status: str = CacheStatus.MISS
    error_code: str = ""


def usage_record_create(*, event: UsageEvent) -> None:
    """Write the ledger row for a request in one INSERT. Idempotent on request_id: a replay changes nothing."""
    UsageRecord.objects.bulk_create([UsageRecord(**asdict(event))], ignore_conflicts=True)
