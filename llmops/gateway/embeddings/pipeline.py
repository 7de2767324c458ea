"""One embeddings request through the pipeline: route, cap, exact cache, admission, the upstream call, the ledger.

The steps are chat completions' (llmops.gateway.chat), taken at the seams they share: the same routing policy and
model resolution, the same admission (rate limits, the tenant's requests in flight, budget reservations), the same
chain of retries and fallbacks, the same ledger row and headers. What differs is what an embedding costs: its input
tokens at the model's input price and nothing else, so the worst case reserved is the cost itself. Its inputs are
never compressed (that would change the vectors), so a rule's prompt cap refuses an input over it when the rule
rejects, and does not apply when the rule would compress; a rule's prompt-token range and cap are judged on the
longest input, each input being one prompt of the model.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import orjson
from django.http import HttpResponse

from billing.budgets.reservations import BudgetExceeded
from billing.ledger.costs import Usage
from core.cpu import run_sized
from llmops.gateway.call import USAGE_SLACK, GatewayCall
from llmops.gateway.chat.admission import admission_hold, chain_budgets, reservation_keep, without_spent_fallbacks
from llmops.gateway.chat.completion import declared_size, run_recorded
from llmops.gateway.chat.pipeline import cache_hit, call_chain, keep_answer
from llmops.gateway.chat.planning import (
    refusal_error,
    request_customer,
    request_tags,
    resolve_model,
    routing_baseline,
)
from llmops.gateway.chat.recording import finish
from llmops.gateway.chat.worst_case import budget_refusal, worst_case_cost
from llmops.gateway.embeddings.validation import validate_embeddings_request
from llmops.gateway.errors import GatewayError
from llmops.gateway.snapshot import ConfigSnapshot
from routing import upstream
from routing.cache.keys import cache_control_from_headers, upstream_identity
from routing.cache.store import CacheRequest, embeddings_cache_request_prepare
from routing.caps import COMPRESS
from routing.catalog import ModelEntry
from routing.models import ModelKind
from routing.policy import RouteDecision, RoutingRefusal, route_request, route_request_from_embeddings
from routing.tokens import count_embedding_tokens, embedding_inputs, encoding_name_for

# An answer larger than this (about 80 vectors of 1,536 floats as JSON) is not cached: the cache keeps answers in Redis
# and Postgres, where a batch of thousands of vectors would weigh more than a repeat of it saves.
CACHE_MAX_ANSWER_BYTES = 1024 * 1024
BUDGET_ADVICE = "Send fewer or shorter inputs."


@dataclass(slots=True)
class EmbeddingsPlan:
    chain: list[ModelEntry]
    body: dict
    # Each input's tokens, counted in the served model's encoding.
    input_tokens: list[int]
    # None when this request neither reads nor writes the response cache.
    cache: CacheRequest | None = None

    @property
    def total_tokens(self) -> int:
        return sum(self.input_tokens)


def _why_it_cannot_embed(model: ModelEntry) -> str:
    """Why ``model`` cannot answer an embeddings request; empty when it can."""
    if model.kind != ModelKind.EMBEDDING:
        return "is a chat model; /v1/embeddings needs a model of kind embedding"
    if not upstream.has_embeddings(model.provider):
        return f"is served by provider {model.provider.name}, whose API ({model.provider.kind}) has no embeddings"
    return ""


def _refuse_unless_it_embeds(model: ModelEntry, *, requested: str) -> None:
    if why := _why_it_cannot_embed(model):
        routed = f" (where `{requested}` was routed)" if requested != model.name else ""
        raise GatewayError(
            f"The model `{model.name}`{routed} {why}. GET /v1/models lists the models your key may use.",
            status=400,
            code="model_capability_unsupported",
            param="model",
        )


def _text_chars(inputs: list) -> int:
    return sum(len(item) for item in inputs if isinstance(item, str))


async def _counted(inputs: list, *, model: str) -> list[int]:
    return await run_sized(_text_chars(inputs), count_embedding_tokens, inputs, model=model)


def _refuse_over_caps(decision: RouteDecision, served: ModelEntry, input_tokens: list[int]) -> None:
    """The rule's rejecting prompt cap, and the model's context window, held to every input."""
    longest = max(input_tokens)
    index = input_tokens.index(longest)
    param = "input" if len(input_tokens) == 1 else f"input[{index}]"
    outcome = decision.outcome
    cap = outcome.prompt_token_cap
    if cap is not None and outcome.over_cap_action != COMPRESS and longest > cap:
        rule = f" of routing rule '{decision.rule_name}'" if decision.rule_name else ""
        raise GatewayError(
            f"Your input has {longest} tokens, over the cap of {cap} tokens{rule}. Shorten it (inputs are never "
            "compressed).",
            status=400,
            code="token_cap_exceeded",
            param=param,
        )
    if longest > served.context_window:
        raise GatewayError(
            f"The model `{served.name}` takes at most {served.context_window} tokens an input, and your input has "
            f"{longest}. Shorten it.",
            status=400,
            code="context_length_exceeded",
            param=param,
        )


async def plan_embeddings(
    snapshot: ConfigSnapshot, call: GatewayCall, body: dict, headers: Mapping[str, str]
) -> EmbeddingsPlan:
    """Route the request as chat completions are routed (rules, aliases, the tenant's models), to a model that embeds,
    with the fallbacks of its rule that embed too; count and cap its inputs; prepare its view of the cache."""
    catalog = snapshot.catalog
    tenant_id = call.principal.tenant_id
    policy = snapshot.policies.get(tenant_id)
    call.tags = request_tags(headers)
    call.customer = request_customer(headers, body.get("user"))
    call.routing_baseline = routing_baseline(catalog, policy, body["model"], tenant_id=tenant_id)
    inputs = embedding_inputs(body["input"])
    counting_model = catalog.prompt_counting_model(tenant_id, body["model"])
    input_tokens = await _counted(inputs, model=counting_model)
    try:
        features = route_request_from_embeddings(
            body,
            headers=headers,
            tenant_id=tenant_id,
            team_slug=call.principal.team_slug,
            prompt_tokens=max(input_tokens),
        )
        decision = route_request(policy, features, catalog)
    except RoutingRefusal as refusal:
        raise refusal_error(refusal) from refusal
    call.route, call.route_explanation = decision.route, decision.explanation
    call.routed_to_large, call.policy_version = decision.routed_to_large, decision.policy_version
    served = resolve_model(catalog, tenant_id=tenant_id, requested=decision.outcome.target_model)
    call.served = served
    _refuse_unless_it_embeds(served, requested=body["model"])
    if encoding_name_for(served.upstream_name) != encoding_name_for(counting_model):
        input_tokens = await _counted(inputs, model=served.upstream_name)
    _refuse_over_caps(decision, served, input_tokens)
    fallbacks = [catalog.models[name] for name in decision.outcome.fallback_models if name in catalog.models]
    chain = [served] + [model for model in fallbacks if not _why_it_cannot_embed(model)]
    call.prompt_tokens_before_compression = call.prompt_tokens_after_compression = sum(input_tokens)
    cache = embeddings_cache_request_prepare(
        tenant_id=tenant_id,
        served_model=served.name,
        upstream=upstream_identity(served),
        body=body,
        rule_name=decision.rule_name,
        ttl_seconds=decision.outcome.cache_ttl_seconds,
        control=cache_control_from_headers(headers),
    )
    return EmbeddingsPlan(chain=chain, body=body, input_tokens=input_tokens, cache=cache)


def _answered(call: GatewayCall, content: bytes) -> HttpResponse:
    response = HttpResponse(content, content_type="application/json")
    for name, value in call.response_headers().items():
        response[name] = value
    return response


def _logged(answer: dict) -> dict:
    """What the payload log keeps of an answer: everything but the vectors."""
    return {key: value for key, value in answer.items() if key != "data"}


async def answer_embeddings_from_cache(call: GatewayCall, plan: EmbeddingsPlan) -> HttpResponse | None:
    """The stored vectors when the cache has them: no reservation, no upstream call, a ledger row costing 0 that
    records what the miss would have cost."""
    hit = await cache_hit(call, plan.cache)
    if hit is None:
        return None
    usage = hit.answer.get("usage")
    call.cache_saved_usage = (
        Usage(prompt_tokens=usage["prompt_tokens"])
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int)
        else Usage(prompt_tokens=plan.total_tokens, estimated=True)
    )
    await finish(call, http_status=200, answer=_logged(hit.answer))
    return _answered(call, orjson.dumps(hit.answer))


async def admit_embeddings(
    snapshot: ConfigSnapshot, call: GatewayCall, plan: EmbeddingsPlan, *, limit_concurrency: bool = False
) -> None:
    """Rate limits count the inputs' tokens, and budgets reserve their cost on the dearest model of the chain (an
    embedding costs no output); a blocking budget it would go over refuses it."""
    tokens = plan.total_tokens
    budgets = chain_budgets(snapshot, call, plan.chain)

    # The inputs were counted for the served model; a fallback that bills another tokenizer's count is reserved at
    # the margin it may add.
    counted_for = plan.chain[0].upstream_name

    def worst_case(chain: list[ModelEntry]) -> Decimal:
        return max(
            worst_case_cost(model, prompt_tokens=tokens, completion_tokens=0, counted_for=counted_for)
            for model in chain
        )

    reserved = await admission_hold(
        snapshot,
        call,
        budgets=budgets,
        tokens=tokens,
        amount=worst_case(plan.chain) if budgets else Decimal(0),
        limit_concurrency=limit_concurrency,
    )
    if reserved is not None:
        plan.chain, reserved = await without_spent_fallbacks(
            snapshot, call, plan.chain, reserved, worst_case=worst_case
        )
    if isinstance(reserved, BudgetExceeded):
        raise budget_refusal(reserved, advice=BUDGET_ADVICE) from reserved
    if reserved is not None:
        reservation_keep(call, reserved)


def _reply_usage(reply: upstream.UpstreamReply, *, model: ModelEntry, counted: int) -> Usage:
    """What the answer is priced at: the provider's input tokens when believable (else the answer is the model's
    failure), the gateway's count when it reports none."""
    reported = (reply.body.get("usage") or {}).get("prompt_tokens")
    if reported is None:
        return Usage(prompt_tokens=counted, estimated=True)
    ceiling = USAGE_SLACK * counted
    if reported > ceiling:
        problem = upstream.MalformedAnswer(
            f"usage.prompt_tokens is {reported}, more than this request allows ({ceiling})"
        )
        raise upstream.invalid_response(model.provider, problem, elapsed_ms=reply.elapsed_ms)
    return Usage(prompt_tokens=reported)


async def embed(call: GatewayCall, plan: EmbeddingsPlan) -> HttpResponse:
    counted = plan.total_tokens

    async def attempt(model: ModelEntry) -> tuple[upstream.UpstreamReply, Usage]:
        reply = await upstream.embeddings(model.provider, {**plan.body, "model": model.upstream_name})
        usage = _reply_usage(reply, model=model, counted=counted)
        # Billed from here on, even if the client leaves before the row is written.
        call.answer_usage = usage
        return reply, usage

    async def estimate(model: ModelEntry, completion_text: str) -> Usage:
        # An embedding bills its inputs alone, the gateway's count of them, whatever came back.
        return Usage(prompt_tokens=counted, estimated=True)

    reply, usage = (await call_chain(call, plan.chain, attempt, estimate=estimate)).value
    call.upstream_ms = reply.elapsed_ms
    await finish(call, http_status=200, usage=usage, answer=_logged(reply.body))
    if len(reply.raw) <= CACHE_MAX_ANSWER_BYTES:
        keep_answer(call, plan.cache, reply.body)
    return _answered(call, reply.raw)


async def embeddings_run(
    call: GatewayCall,
    *,
    snapshot: ConfigSnapshot,
    read_body: Callable[[], object],
    headers: Mapping[str, str],
    limit_concurrency: bool = False,
) -> HttpResponse:
    """Validate, route, cap, answer from the cache or admit, call and record, as ``run_recorded`` runs steps."""

    async def steps() -> HttpResponse:
        body = await run_sized(declared_size(headers), lambda: validate_embeddings_request(read_body()))
        call.request_body = body
        call.payload_logging = call.principal.tenant_id in snapshot.payload_logging_tenants
        call.requested_model = body["model"]
        plan = await plan_embeddings(snapshot, call, body, headers)
        cached = await answer_embeddings_from_cache(call, plan)
        if cached is not None:
            return cached
        await admit_embeddings(snapshot, call, plan, limit_concurrency=limit_concurrency)
        return await embed(call, plan)

    return await run_recorded(call, steps)
