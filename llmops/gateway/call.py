"""One request as it moves through the gateway, and what becomes of it in the ledger."""

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing.budgets.reservations import Reservation
from billing.ledger.costs import format_cost, usage_cost
from billing.ledger.services import UsageEvent
from billing.models import CacheStatus, UsageKind
from core.cpu import run_sized
from llmops.gateway.chat.worst_case import OutputBound
from llmops.gateway.concurrency import InflightSlot
from routing.catalog import ModelEntry
from routing.providers.base import MalformedAnswer, UpstreamReply, answer_text, invalid_response
from routing.tokens import count_chat_tokens_async, count_text_tokens
from tenants.authentication import KeyPrincipal


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @classmethod
    def from_provider(cls, usage: dict) -> "Usage":
        """From a usage object the adapter checked (``routing.providers.base.checked_usage``)."""
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            cache_write_tokens=int(details.get("cache_write_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


# An answer may report up to this many times what its request could hold (the model's context window, or the prompt
# as the gateway counted it when that is more) and produce (every choice at its max_tokens, else the model's maximum
# output, else its context window). Tokenizers differ, and providers add framing, but never by this much.
USAGE_SLACK = 4


@dataclass(frozen=True, slots=True)
class UsageCeiling:
    """The most tokens an answer of one model to one request may report and still be priced."""

    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, model: ModelEntry, *, body: dict, prompt_tokens: int) -> "UsageCeiling":
        """For ``model`` answering ``body``; ``prompt_tokens`` as the gateway counted the prompt (0: not counted)."""
        output = OutputBound.of(body, model=model.upstream_name)
        return cls(
            prompt_tokens=USAGE_SLACK * max(model.context_window, prompt_tokens),
            completion_tokens=USAGE_SLACK * output.completion_tokens(model, fallback=model.context_window),
        )

    def check(self, usage: Usage) -> Usage:
        """The usage when it is believable; raises MalformedAnswer when it reports more than the request allows."""
        for name, reported, ceiling in (
            ("prompt_tokens", usage.prompt_tokens, self.prompt_tokens),
            ("completion_tokens", usage.completion_tokens, self.completion_tokens),
        ):
            if reported > ceiling:
                raise MalformedAnswer(f"usage.{name} is {reported}, more than this request allows ({ceiling})")
        return usage


async def estimated_usage(body: dict, completion_text: str, model: ModelEntry) -> Usage:
    """Usage counted by the gateway, for a provider that returned none or one not believed; counted on the CPU pool
    when large, since a client can bring this about (a stream it leaves) for a prompt of any size."""
    return Usage(
        prompt_tokens=await count_chat_tokens_async(body["messages"], model=model.upstream_name),
        completion_tokens=await run_sized(
            len(completion_text), count_text_tokens, completion_text, model=model.upstream_name
        ),
        estimated=True,
    )


async def reply_usage(reply: UpstreamReply, *, body: dict, model: ModelEntry, prompt_tokens: int) -> Usage:
    """What an answer of ``model`` to ``body`` is priced at: its usage when that is believable for the request
    (else the answer is the model's failure, an UpstreamInvalidResponse), the gateway's own count when it has none.
    ``prompt_tokens`` is the prompt as the gateway counted it (0 when not counted)."""
    if reply.body.get("usage") is None:
        return await estimated_usage(body, answer_text(reply.body), model)
    ceiling = UsageCeiling.of(model, body=body, prompt_tokens=prompt_tokens)
    try:
        return ceiling.check(Usage.from_provider(reply.body["usage"]))
    except MalformedAnswer as problem:
        text = answer_text(reply.body)
        raise invalid_response(model.provider, problem, elapsed_ms=reply.elapsed_ms, completion_text=text) from problem


@dataclass(slots=True)
class GatewayCall:
    """One request as it moves through the pipeline; becomes its ledger row."""

    principal: KeyPrincipal
    endpoint: str
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=timezone.now)
    requested_model: str = ""
    served: ModelEntry | None = None
    is_stream: bool = False
    route: str = ""
    route_explanation: str = ""
    routed_to_large: bool = False
    policy_version: int | None = None
    prompt_tokens_before_compression: int | None = None
    prompt_tokens_after_compression: int | None = None
    injection_flagged: bool = False
    attempts: int = 0
    tags: list[str] = field(default_factory=list)
    # The model the request would have used without routing: the one it named, or its alias's large model.
    routing_baseline: ModelEntry | None = None
    upstream_ms: int | None = None
    cost_usd: str | None = None
    reservation: Reservation | None = None
    # The tenant's slot for a request in flight (live /v1 requests past admission); given back when it ends.
    inflight: InflightSlot | None = None
    budget_remaining_usd: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    # The validated client body, kept for the payload log of tenants that turned it on.
    request_body: dict | None = None
    payload_logging: bool = False
    finished: bool = False
    cache_status: str = CacheStatus.MISS
    cache_similarity: float | None = None
    # On a cache hit: the stored answer's usage, what the request would have cost had it missed.
    cache_saved_usage: Usage | None = None
    # A call the gateway makes on a request's behalf (a compression summary) is a GatewayCall of its own kind,
    # linked to the request by its id.
    kind: str = UsageKind.REQUEST
    parent_request_id: str = ""
    # What this request's compression summary calls cost: compression's saving is net of it.
    compression_summary_usd: Decimal = field(default_factory=Decimal)
    # Work that stores its result and its ledger row in one transaction (batch lines, jobs) sets ledger_deferred:
    # finish() then leaves the row's event in ledger_event for it to write, instead of recording it.
    ledger_deferred: bool = False
    ledger_event: UsageEvent | None = None

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def overhead_ms(self) -> float:
        total = (time.perf_counter() - self.started) * 1000
        return max(total - (self.upstream_ms or 0), 0.0)

    def usage_event(self, *, http_status: int, usage: Usage | None = None, error_code: str = "") -> UsageEvent:
        usage = usage or Usage()
        event = UsageEvent(
            request_id=self.request_id,
            tenant_id=self.principal.tenant_id,
            team_id=self.principal.team_id,
            api_key_id=self.principal.key_id,
            created_at=self.created_at,
            endpoint=self.endpoint,
            http_status=http_status,
            requested_model=self.requested_model,
            served_model=self.served.name if self.served else "",
            is_stream=self.is_stream,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            completion_tokens=usage.completion_tokens,
            usage_estimated=usage.estimated,
            upstream_latency_ms=self.upstream_ms,
            total_latency_ms=self.elapsed_ms(),
            cache_status=self.cache_status,
            error_code=error_code,
            route=self.route,
            routed_to_large=self.routed_to_large,
            policy_version=self.policy_version,
            prompt_tokens_before_compression=self.prompt_tokens_before_compression,
            prompt_tokens_after_compression=self.prompt_tokens_after_compression,
            injection_flagged=self.injection_flagged,
            attempts=self.attempts,
            tags=self.tags,
            kind=self.kind,
            parent_request_id=self.parent_request_id,
        )
        if self.served is not None:
            event.cost_usd = self._cost(self.served, usage)
            self.cost_usd = format_cost(event.cost_usd)
            event.saved_routing_usd = self._routing_saving(usage, event.cost_usd)
            event.saved_compression_usd = self._compression_saving()
            if self.cache_saved_usage is not None:
                event.saved_cache_usd = self._cost(self.served, self.cache_saved_usage)
        return event

    @staticmethod
    def _cost(model: ModelEntry, usage: Usage) -> Decimal:
        return usage_cost(
            prices=model.prices,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )

    def _routing_saving(self, usage: Usage, cost: Decimal) -> Decimal:
        baseline = self.routing_baseline
        if baseline is None or baseline.name == self.served.name:
            return Decimal(0)
        return max(self._cost(baseline, usage) - cost, Decimal(0))

    def _compression_saving(self) -> Decimal:
        before, after = self.prompt_tokens_before_compression, self.prompt_tokens_after_compression
        removed = Decimal(0)
        if before and after and after < before:
            removed = usage_cost(
                prices=self.served.prices, prompt_tokens=before - after, cached_tokens=0, completion_tokens=0
            )
        return removed - self.compression_summary_usd

    def response_headers(self) -> dict[str, str]:
        headers = {"x-llmops-request-id": self.request_id, "x-llmops-cache": str(self.cache_status)}
        if self.cache_similarity is not None:
            headers["x-llmops-cache-similarity"] = f"{self.cache_similarity:.4f}"
        if self.served:
            headers["x-llmops-model"] = self.served.name
        if self.route_explanation:
            headers["x-llmops-route"] = self.route_explanation
        if self.cost_usd is not None:
            headers["x-llmops-cost-usd"] = self.cost_usd
        if self.budget_remaining_usd is not None:
            headers["x-llmops-budget-remaining-usd"] = self.budget_remaining_usd
        headers["x-llmops-overhead-ms"] = f"{self.overhead_ms():.2f}"
        headers.update(self.extra_headers)
        return headers
