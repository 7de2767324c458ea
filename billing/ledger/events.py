"""One ledger row on its way to the database (the Redis stream, the dead letters, a batch line's transaction).

The gateway's GatewayCall is a RequestFacts: the pipeline fills the facts in as it learns them, and the row takes
them as they are. What a request cost and saved is priced here, from its usage, not by the gateway.
"""

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal

from billing.ledger.costs import Usage, batch_price, compression_saving, provider_cache_saving, routing_saving
from billing.models import ROUTING_HINT_MAX_LENGTH, CacheStatus, UsageKind
from routing.catalog import ModelPrices
from routing.policy.engine import RouteDecision, RouteRequest


@dataclass(slots=True, kw_only=True)
class RequestFacts:
    """What the pipeline learns about a request on its way through, kept as is in its ledger row."""

    request_id: str
    created_at: datetime
    endpoint: str = "/v1/chat/completions"
    requested_model: str = ""
    is_stream: bool = False
    cache_status: str = CacheStatus.MISS
    route: str = ""
    routed_to_large: bool = False
    policy_version: int | None = None
    prompt_tokens_before_compression: int | None = None
    prompt_tokens_after_compression: int | None = None
    injection_flagged: bool = False
    attempts: int = 0
    tags: list[str] = field(default_factory=list)
    # The tenant's end customer the request was made for (x-llmops-customer, else the OpenAI `user` field); "" for none.
    customer: str = ""
    # What routing read of the request (has_tools None: it never reached routing), so a what-if replay under
    # another policy can route it again from its ledger row.
    task_type: str = ""
    user_tier: str = ""
    has_tools: bool | None = None
    has_images: bool | None = None
    difficulty_score: int | None = None
    # A call the gateway makes on a request's behalf (a compression summary) has a row of its own kind, linked to
    # the request by its id.
    kind: str = UsageKind.REQUEST
    parent_request_id: str = ""

    def routing_features_set(self, features: RouteRequest, decision: RouteDecision) -> None:
        self.task_type = features.task_type[:ROUTING_HINT_MAX_LENGTH]
        self.user_tier = features.user_tier[:ROUTING_HINT_MAX_LENGTH]
        self.has_tools, self.has_images = features.has_tools, features.has_images
        self.difficulty_score = decision.difficulty.total if decision.difficulty else None

    def request_facts(self) -> dict:
        return {name: getattr(self, name) for name in REQUEST_FACTS}


REQUEST_FACTS = tuple(f.name for f in fields(RequestFacts))


# The event's usage fields, and the Usage field each holds.
USAGE_FIELDS = {
    "prompt_tokens": "prompt_tokens",
    "cached_tokens": "cached_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "completion_tokens": "completion_tokens",
    "usage_estimated": "estimated",
}


@dataclass(slots=True, kw_only=True)
class UsageEvent(RequestFacts):
    """A request's ledger row: its facts, whose key made it, how it ended, what it used, cost and saved."""

    tenant_id: int
    team_id: int
    api_key_id: int
    http_status: int
    error_code: str = ""
    served_model: str = ""
    upstream_latency_ms: int | None = None
    total_latency_ms: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: Decimal = field(default_factory=Decimal)
    # The price version of the served model the cost was computed at (routing.ModelPrice).
    price_version_id: int | None = None
    saved_cache_usd: Decimal = field(default_factory=Decimal)
    saved_routing_usd: Decimal = field(default_factory=Decimal)
    saved_compression_usd: Decimal = field(default_factory=Decimal)
    saved_batch_usd: Decimal = field(default_factory=Decimal)
    saved_provider_cache_usd: Decimal = field(default_factory=Decimal)

    @classmethod
    def of(cls, facts: RequestFacts, *, usage: Usage, **outcome) -> "UsageEvent":
        """The row of a request with these facts and usage; ``outcome`` names the rest (who, status, latency)."""
        usage_fields = {name: getattr(usage, usage_name) for name, usage_name in USAGE_FIELDS.items()}
        return cls(**facts.request_facts(), **usage_fields, **outcome)

    @property
    def usage(self) -> Usage:
        return Usage(**{usage_name: getattr(self, name) for name, usage_name in USAGE_FIELDS.items()})

    def price(
        self,
        served: ModelPrices,
        *,
        routing_baseline: ModelPrices | None = None,
        cache_hit_usage: Usage | None = None,
        compression_summary_usd: Decimal = Decimal(0),
    ) -> None:
        """Cost and savings at the prices of the model that served the request.

        ``routing_baseline``: the prices of the model it would have used without routing, when routing chose another.
        ``cache_hit_usage``: on a cache hit, the stored answer's usage, what the request would have cost had it missed.
        ``compression_summary_usd``: what its compression summary calls cost; compression's saving is net of it.
        """
        usage = self.usage
        self.cost_usd = usage.cost(served)
        self.price_version_id = served.version_id
        self.saved_routing_usd = routing_saving(usage, served=served, baseline=routing_baseline)
        self.saved_provider_cache_usd = provider_cache_saving(usage, cost=self.cost_usd, prices=served)
        self.saved_compression_usd = compression_saving(
            served,
            tokens_before=self.prompt_tokens_before_compression,
            tokens_after=self.prompt_tokens_after_compression,
            summary_usd=compression_summary_usd,
        )
        if cache_hit_usage is not None:
            self.saved_cache_usd = cache_hit_usage.cost(served)

    def batch_discount(self, *, multiplier: Decimal) -> None:
        """Charged as an answer of the provider's batch endpoint: ``multiplier`` of the list price, the rest saved."""
        self.cost_usd, self.saved_batch_usd = batch_price(self.cost_usd, multiplier=multiplier)

    def flex_discount(self, *, tier: str | None, multiplier: Decimal | None) -> None:
        """Charged as the provider charges its flex tier, when ``tier`` (the answer's `service_tier`) says it served
        the answer there and the model has flex prices (``multiplier``): OpenAI prices flex as its Batch API, so the
        discount is counted as the batch one."""
        if tier == "flex" and multiplier is not None:
            self.batch_discount(multiplier=multiplier)
