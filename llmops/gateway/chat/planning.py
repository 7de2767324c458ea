"""Before the upstream call: route the request, resolve the model chain, enforce caps, run the guard.

Everything here reads the in-memory snapshot; the only I/O is the optional summary call that
context compression makes through the tenant's default model, metered in llmops.gateway.chat.summaries.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from billing.ledger.columns import TAG_JOINER, UNTAGGED_LABEL
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.summaries import SummaryGate, metered_summarizer
from llmops.gateway.chat.validation import validate_customer
from llmops.gateway.errors import GatewayError, invalid_request
from llmops.gateway.snapshot import ConfigSnapshot
from routing.cache.keys import cache_control_from_headers, upstream_identity
from routing.cache.store import CacheRequest, cache_request_prepare
from routing.caps import apply_token_caps, cap_refusal, cap_refusal_before_counting
from routing.catalog import DEFAULT_MODEL_ALIAS, ModelCatalog, ModelEntry
from routing.compression import SummaryRefused
from routing.injection_guard import PromptInjectionBlocked, guard_request
from routing.models import ModelKind
from routing.policy import RouteDecision, RouteRequest, RoutingRefusal, route_request, route_request_from_body
from routing.tokens import count_prompt_tokens_async, encoding_name_for
from tenants.authentication import KeyPrincipal

logger = logging.getLogger(__name__)

TAGS_HEADER = "x-llmops-tags"
CUSTOMER_HEADER = "x-llmops-customer"
MAX_TAGS = 10
MAX_TAG_LENGTH = 64
# Fields that steer the gateway, sent upstream only with `store`: OpenAI keeps a stored completion's metadata, to
# filter stored completions by, and takes it without `store` from no one.
GATEWAY_ONLY_FIELDS = ("metadata",)


@dataclass(slots=True)
class ChatPlan:
    chain: list[ModelEntry]
    body: dict
    decision: RouteDecision
    # None when this request neither reads nor writes the response cache.
    cache: CacheRequest | None = None
    # What the guard does with a flagged prompt or answer: none, flag or block (the tenant's live policy).
    guard_action: str = "none"

    @property
    def provider_cache(self) -> str:
        """The matched rule's ``provider_cache``: whether adapters mark the prompt for the provider's cache."""
        return self.decision.outcome.provider_cache


def resolve_model(catalog: ModelCatalog, *, tenant_id: int, requested: str) -> ModelEntry:
    access = catalog.access_for(tenant_id)
    name = requested
    if requested == DEFAULT_MODEL_ALIAS:
        if access.default_model is None:
            raise GatewayError(
                "Your tenant has no default model configured; name a model.",
                status=400,
                code="no_default_model",
                param="model",
            )
        name = access.default_model
    model = catalog.models.get(name)
    if model is None:
        raise GatewayError(
            f"The model `{requested}` does not exist. GET /v1/models lists the models your key may use.",
            status=404,
            code="model_not_found",
            param="model",
        )
    if name not in access.allowed_models:
        raise GatewayError(
            f"Your key is not allowed to use the model `{requested}`. GET /v1/models lists the models it may use.",
            status=403,
            code="model_not_allowed",
            param="model",
        )
    return model


def request_tags(headers: Mapping[str, str]) -> list[str]:
    """`x-llmops-tags: a, b` → sorted, unique, bounded tags for cost attribution. A tag holding `+` or named
    `(untagged)` is a 400: a tag group's label joins its tags with `+` and names the requests without tags
    `(untagged)` (billing.ledger.columns), so either would give two tag groups one label."""
    raw = headers.get(TAGS_HEADER) or ""
    given = {tag.strip() for tag in raw.split(",") if tag.strip()}
    if any(TAG_JOINER in tag or tag == UNTAGGED_LABEL for tag in given):
        raise invalid_request(
            f"Invalid value for '{TAGS_HEADER}': a tag may not hold `{TAG_JOINER}` or be `{UNTAGGED_LABEL}`, which "
            "name tag groups in usage reports.",
            param=TAGS_HEADER,
            code="invalid_value",
        )
    tags = sorted({tag[:MAX_TAG_LENGTH] for tag in given})
    if len(tags) > MAX_TAGS:
        raise GatewayError(f"At most {MAX_TAGS} tags per request in {TAGS_HEADER}.", status=400, code="too_many_tags")
    return tags


def request_customer(headers: Mapping[str, str], field_value: object = None, *, param: str = "user") -> str:
    """The end customer a request is made for, for its ledger row and customer-scope budgets and rate limits: the
    x-llmops-customer header when it is set, else the body's customer field (``param``: OpenAI's `user`); "" for
    none. Surrounding whitespace is dropped; an id too long or with control characters is a 400.

    Every /v1 endpoint that records usage takes its customer here, each passing its own body field."""
    header = (headers.get(CUSTOMER_HEADER) or "").strip()
    if header:
        validate_customer(CUSTOMER_HEADER, header)
        return header
    if field_value is None:
        return ""
    validate_customer(param, field_value)
    return field_value.strip()


def routing_baseline(catalog: ModelCatalog, policy, requested: str, *, tenant_id: int) -> ModelEntry | None:
    """The model the request would have used without routing: the one it named, or its alias's large model; None
    when the tenant may not use that model. Routing's saving is priced against it and shadow evaluation calls it, so
    a model name the key may not use (which routing can still answer, by a rule that ignores it) is neither."""
    alias = policy.aliases.get(requested) if policy is not None else None
    name = alias.large_model if alias is not None else requested
    if name not in catalog.access_for(tenant_id).allowed_models:
        return None
    return catalog.models.get(name)


# What a model that is not a chat model lacks: (what, the parameter that asks for it, what to do instead).
NOT_CHAT = (
    "chat messages",
    "model",
    "it is an embedding model: send its inputs to /v1/embeddings, or name a chat model",
)


def model_lacks(model: ModelEntry, features: RouteRequest | GatewayCall) -> tuple[str, str, str] | None:
    """What the request needs and the model cannot take: (what, the parameter that asks for it, what to do instead).
    ``features``: the request's routing features, or its call once routed (which keeps has_tools and has_images)."""
    if model.kind != ModelKind.CHAT:
        return NOT_CHAT
    if features.has_tools and not model.supports_tools:
        return "tools", "tools", "send the request without `tools` or to another model"
    if features.has_images and not model.supports_images:
        return "images", "messages", "send text only or use another model"
    return None


def _refusal(model: ModelEntry, lacking: tuple[str, str, str]) -> GatewayError:
    what, param, instead = lacking
    return GatewayError(
        f"The model `{model.name}` cannot take {what}; {instead}.",
        status=400,
        code="model_capability_unsupported",
        param=param,
    )


def _refuse_what_the_model_cannot_take(model: ModelEntry, features: RouteRequest) -> None:
    if lacking := model_lacks(model, features):
        raise _refusal(model, lacking)


def refusal_error(refusal: RoutingRefusal) -> GatewayError:
    return GatewayError(refusal.message, status=refusal.status, code=refusal.code, param=refusal.param)


@dataclass(slots=True)
class _Routed:
    """A prompt counted and routed."""

    features: RouteRequest
    decision: RouteDecision
    # Counted in the encoding of counting_model, before the served model was known.
    prompt_tokens: int
    counting_model: str

    def tokens_for(self, served: ModelEntry) -> int | None:
        """The count, if the served model's encoding is the one it was counted in."""
        same_encoding = encoding_name_for(served.upstream_name) == encoding_name_for(self.counting_model)
        return self.prompt_tokens if same_encoding else None


async def _routed(snapshot: ConfigSnapshot, principal: KeyPrincipal, body: dict, headers: Mapping[str, str]) -> _Routed:
    """Refuse a prompt its length alone proves over a cap, count it, route it; raises RoutingRefusal."""
    catalog = snapshot.catalog
    tenant_id = principal.tenant_id
    policy = snapshot.policies.get(tenant_id)
    refusal = cap_refusal_before_counting(policy, body["messages"], requested_model=body["model"])
    if refusal is not None:
        raise refusal
    counting_model = catalog.prompt_counting_model(tenant_id, body["model"])
    prompt_tokens = await count_prompt_tokens_async(body, model=counting_model)
    features = route_request_from_body(
        body, headers=headers, tenant_id=tenant_id, team_slug=principal.team_slug, prompt_tokens=prompt_tokens
    )
    return _Routed(features, route_request(policy, features, catalog), prompt_tokens, counting_model)


async def prompt_tokens_counted(
    snapshot: ConfigSnapshot, principal: KeyPrincipal, body: dict, headers: Mapping[str, str]
) -> int:
    """The prompt's tokens as plan_chat counts them, the count its ledger row and budget reservation start from: in
    the encoding of the model routing picks for it, refused where plan_chat refuses the prompt (the key's access to
    that model, routing's refusals, a cap whose rule rejects). Nothing is compressed or guarded: the count is of the
    prompt as sent."""
    try:
        routed = await _routed(snapshot, principal, body, headers)
        target = routed.decision.outcome.target_model
        served = resolve_model(snapshot.catalog, tenant_id=principal.tenant_id, requested=target)
        _refuse_what_the_model_cannot_take(served, routed.features)
        return await _tokens_under_cap(routed, served, body)
    except RoutingRefusal as refusal:
        raise refusal_error(refusal) from refusal


async def _tokens_under_cap(routed: _Routed, served: ModelEntry, body: dict) -> int:
    """The prompt's tokens in the served model's encoding; raises TokenCapExceeded over a cap its rule rejects at."""
    tokens = routed.tokens_for(served)
    if tokens is None:
        tokens = await count_prompt_tokens_async(body, model=served.upstream_name)
    if (refusal := cap_refusal(routed.decision, tokens)) is not None:
        raise refusal
    return tokens


async def plan_chat(
    snapshot: ConfigSnapshot,
    call: GatewayCall,
    body: dict,
    headers: Mapping[str, str],
    *,
    admit_summary: SummaryGate | None = None,
) -> ChatPlan:
    """Route, cap and compress the request and prepare its cache lookup. ``admit_summary`` admits the request (its
    rate limits, its slot for requests in flight) before a compression summary is paid for."""
    catalog = snapshot.catalog
    tenant_id = call.principal.tenant_id
    policy = snapshot.policies.get(tenant_id)
    call.tags = request_tags(headers)
    call.customer = request_customer(headers, body.get("user"))
    call.routing_baseline = routing_baseline(catalog, policy, body["model"], tenant_id=tenant_id)
    guard_action = policy.injection_guard_action if policy else "none"
    try:
        routed = await _routed(snapshot, call.principal, body, headers)
        decision = routed.decision
        call.route, call.route_explanation = decision.route, decision.explanation
        call.routed_to_large, call.policy_version = decision.routed_to_large, decision.policy_version
        call.routing_features_set(routed.features, decision)
        served = resolve_model(catalog, tenant_id=tenant_id, requested=decision.outcome.target_model)
        call.served = call.routed = served
        _refuse_what_the_model_cannot_take(served, routed.features)
        fallbacks = [catalog.models[name] for name in decision.outcome.fallback_models if name in catalog.models]
        chain = [served] + [model for model in fallbacks if model_lacks(model, routed.features) is None]
        upstream_body = body if body.get("store") else {k: v for k, v in body.items() if k not in GATEWAY_ONLY_FIELDS}
        prompt_tokens = await _tokens_under_cap(routed, served, upstream_body)
        # The conversation as sent, not as compressed: the turns compression drops come back only as a summary, and a
        # request the guard blocks pays for no summary. A cap that rejects has refused a huge prompt before the scan.
        verdict = guard_request(upstream_body["messages"], action=guard_action)
        call.injection_flagged = verdict.flagged
        capped = await apply_token_caps(
            upstream_body,
            decision=decision,
            model=served.upstream_name,
            summarize=metered_summarizer(snapshot, call, admit_summary),
            namespace=str(tenant_id),
            prompt_tokens=prompt_tokens,
        )
        call.prompt_tokens_before_compression = capped.prompt_tokens_before
        call.prompt_tokens_after_compression = capped.prompt_tokens_after
    except RoutingRefusal as refusal:
        # A flagged prompt stays flagged when a cap refuses it after the scan.
        call.injection_flagged |= isinstance(refusal, PromptInjectionBlocked)
        raise refusal_error(refusal) from refusal
    except SummaryRefused as refused:
        raise refused.reason from refused
    cache = cache_request_prepare(
        tenant_id=tenant_id,
        served_model=served.name,
        upstream=upstream_identity(served),
        body=capped.body,
        rule_name=decision.rule_name,
        ttl_seconds=decision.outcome.cache_ttl_seconds,
        allow_nondeterministic=decision.outcome.cache_nondeterministic,
        control=cache_control_from_headers(headers),
        semantic=decision.outcome.semantic_cache,
    )
    return ChatPlan(chain=chain, body=capped.body, decision=decision, cache=cache, guard_action=guard_action)
