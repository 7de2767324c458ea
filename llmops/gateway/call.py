"""One request as it moves through the gateway, and what becomes of it in the ledger."""

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from django.utils import timezone

from billing.budgets.reservations import Reservation
from billing.ledger.costs import Usage, format_cost
from billing.ledger.events import RequestFacts, UsageEvent
from core.cpu import run_sized
from llmops.gateway.chat.worst_case import OutputBound, prediction_chars
from llmops.gateway.concurrency import InflightSlot
from llmops.gateway.errors import request_id_headers
from llmops.gateway.shadow.rates import EvaluationRates
from routing.catalog import ModelEntry
from routing.media import PromptMedia
from routing.providers.base import MalformedAnswer, UpstreamReply, answer_text, invalid_response, served_tier
from routing.tokens import count_prompt_tokens_async, count_text_tokens
from tenants.authentication import KeyPrincipal


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


class ChainWatch(Protocol):
    """Told when a request's upstream chain (its attempts, retries and fallbacks) starts, past admission, and when it
    has ended, before anything of it is charged: work whose process may die during the call keeps a note of it (a
    job's run, for the run after its worker's death)."""

    async def started(self, call: "GatewayCall") -> None: ...

    async def ended(self, call: "GatewayCall") -> None: ...


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
    when large, since a client can bring this about (a stream it leaves) for a prompt of any size. The prompt's images
    and files, which the gateway cannot count, are charged at the bound they were reserved at (routing.media); the
    answer at no more than the request let the model write, which a provider never bills past and tiktoken's count of
    another tokenizer's text may go over."""
    text_tokens = await count_prompt_tokens_async(body, model=model.upstream_name)
    counted = await run_sized(len(completion_text), count_text_tokens, completion_text, model=model.upstream_name)
    bound = await run_sized(prediction_chars(body), OutputBound.of, body, model=model.upstream_name)
    written_at_most = bound.completion_tokens(model, fallback=model.context_window)
    return Usage(
        prompt_tokens=PromptMedia.of(body["messages"]).prompt_tokens(model, text_tokens),
        completion_tokens=min(counted, written_at_most),
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
        tier = served_tier(reply.body)
        raise invalid_response(
            model.provider, problem, elapsed_ms=reply.elapsed_ms, completion_text=text, service_tier=tier
        ) from problem


@dataclass(slots=True, kw_only=True)
class GatewayCall(RequestFacts):
    """One request as it moves through the pipeline: the facts its ledger row keeps (RequestFacts), filled in as
    the pipeline learns them, and what the pipeline needs on the way."""

    principal: KeyPrincipal
    request_id: str = field(default_factory=new_request_id)
    created_at: datetime = field(default_factory=timezone.now)
    started: float = field(default_factory=time.perf_counter)
    served: ModelEntry | None = None
    # The model routing chose: ``served`` is another when a fallback answered after it failed (or a budget downgrade).
    routed: ModelEntry | None = None
    route_explanation: str = ""
    # The model the request would have used without routing: the one it named, or its alias's large model.
    routing_baseline: ModelEntry | None = None
    # The model the route chose when a budget downgraded the request to a cheaper one.
    downgraded_from: ModelEntry | None = None
    # The tenant's shadow-evaluation sample rates (None: it does not evaluate), for the answer's sample draw.
    evaluation: EvaluationRates | None = None
    upstream_ms: int | None = None
    cost_usd: str | None = None
    reservation: Reservation | None = None
    # The tenant's slot for a request in flight (live /v1 requests past admission); given back when it ends.
    inflight: InflightSlot | None = None
    budget_remaining_usd: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    # The validated client body, kept for the payload log of tenants that turned it on.
    request_body: dict | None = None
    # Its size as the client declared it (Content-Length; 0 when unknown), for what keeping it would cost.
    request_bytes: int = 0
    payload_logging: bool = False
    finished: bool = False
    cache_similarity: float | None = None
    # On a cache hit: the stored answer's usage, what the request would have cost had it missed.
    cache_saved_usage: Usage | None = None
    # What this request's compression summary calls cost: compression's saving is net of it.
    compression_summary_usd: Decimal = field(default_factory=Decimal)
    # Work that stores its result and its ledger row in one transaction (batch lines, jobs) sets ledger_deferred:
    # finish() then leaves the row's event in ledger_event for it to write, instead of recording it.
    ledger_deferred: bool = False
    ledger_event: UsageEvent | None = None
    # A list where the work writes the ledger rows linked to its own (``parent_request_id``: its compression summaries,
    # its failed attempts the provider may bill) with its own too (batch lines): each one's event is left here instead
    # of being recorded. None: they record their own rows.
    linked_events: list[UsageEvent] | None = None
    # No upstream attempt may be under way: until the chain starts (call_chain), and once a cancel found none (between
    # attempts, or before the first). A request cancelled so has no prompt sent to stand for: its 499 row charges
    # nothing (the billed attempts have rows of their own).
    upstream_idle: bool = True
    chain_watch: ChainWatch | None = None
    # The usage of the answer an upstream attempt returned, once one did: the provider bills it whole, so a request
    # cancelled before its row is written (its client gone) is charged it.
    answer_usage: Usage | None = None
    # What the ledger row was priced at, once finish() recorded it: the provider's usage or the gateway's own count.
    settled_usage: Usage | None = None
    # The stop sequence that ended the answer, when the upstream (or the cached answer) says which; /v1/messages
    # answers with it, /v1/chat/completions keeps OpenAI's shape.
    stop_sequence: str | None = None
    # The tier the provider says it served the answer at (the answer's `service_tier`): "flex" is charged the served
    # model's flex share of its prices, where it has one.
    service_tier: str | None = None
    # The status the client is shown for one of the pipeline's, where the endpoint's API names it otherwise
    # (/v1/messages: 503 is 529): the ledger row records what the client saw.
    statuses_shown: Mapping[int, int] = field(default_factory=dict)

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def overhead_ms(self) -> float:
        total = (time.perf_counter() - self.started) * 1000
        return max(total - (self.upstream_ms or 0), 0.0)

    def usage_event(self, *, http_status: int, usage: Usage | None = None, error_code: str = "") -> UsageEvent:
        event = UsageEvent.of(
            self,
            usage=usage or Usage(),
            tenant_id=self.principal.tenant_id,
            team_id=self.principal.team_id,
            api_key_id=self.principal.key_id,
            http_status=self.statuses_shown.get(http_status, http_status),
            error_code=error_code,
            served_model=self.served.name if self.served else "",
            upstream_latency_ms=self.upstream_ms,
            total_latency_ms=self.elapsed_ms(),
        )
        if self.served is not None:
            baseline = self.routing_baseline
            event.price(
                self.served.prices,
                routing_baseline=baseline.prices if baseline and baseline.name != self.served.name else None,
                cache_hit_usage=self.cache_saved_usage,
                compression_summary_usd=self.compression_summary_usd,
            )
            event.flex_discount(tier=self.service_tier, multiplier=self.served.flex_price_multiplier)
            self.cost_usd = format_cost(event.cost_usd)
        return event

    def response_headers(self) -> dict[str, str]:
        headers = {**request_id_headers(self.request_id), "x-llmops-cache": str(self.cache_status)}
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
