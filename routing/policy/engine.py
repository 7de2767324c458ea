"""Route one request under a compiled policy: pure, no queries, fast enough for every request."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from django.conf import settings

from routing.catalog import DEFAULT_MODEL_ALIAS, ModelCatalog
from routing.max_tokens import requested_max_tokens
from routing.policy.document import (
    AUTO_ALIAS,
    NO_OUTCOME,
    CompiledPolicy,
    CompiledRule,
    RuleOutcome,
    keyword_text,
)
from routing.policy.errors import RoutingRefusal
from routing.policy.scoring import DifficultyScore, difficulty_score

TASK_TYPE_HEADER = "x-llmops-task-type"
USER_TIER_HEADER = "x-llmops-user-tier"
# The ledger's route of a request the difficulty score routed: `<rule>+score`, or `score` when no rule matched.
SCORED_ROUTE = "score"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouteRequest:
    tenant_id: int
    requested_model: str
    prompt_tokens: int
    task_type: str = ""
    user_tier: str = ""
    team_slug: str = ""
    has_tools: bool = False
    has_images: bool = False
    last_user_message: str = ""
    requested_max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """What routing decided for one request, and why: the shape the gateway's plan, the caps, the ledger's route
    columns, the simulate API and the admin's test console all read.

    ``outcome`` is the matched rule's (NO_OUTCOME when none matched) with its target resolved — the requested model,
    the alias's pick by difficulty score, or the tenant's default; a pick of the policy's the tenant may no longer use
    gives way to its first fallback — and its fallbacks cut to the tenant's models.
    """

    outcome: RuleOutcome
    rule_name: str = ""
    difficulty: DifficultyScore | None = None
    routed_to_large: bool = False
    policy_version: int | None = None
    explanation: str = ""
    trace: tuple[str, ...] = ()

    @property
    def route(self) -> str:
        """What the ledger stores as the route: the rule's name, `score`, or `direct`."""
        if self.rule_name and not self.difficulty:
            return self.rule_name
        if self.difficulty:
            return f"{self.rule_name}+{SCORED_ROUTE}" if self.rule_name else SCORED_ROUTE
        return "direct"

    def as_json(self) -> dict:
        """The decision as the simulate API and the test console show it."""
        return {
            **self.outcome.as_document(),
            "rule": self.rule_name or None,
            "difficulty_score": self.difficulty.total if self.difficulty else None,
            "difficulty_points": self.difficulty.points if self.difficulty else None,
            "routed_to_large": self.routed_to_large,
            "policy_version": self.policy_version,
            "explanation": self.explanation,
            "trace": list(self.trace),
        }


def _content_parts(message: dict) -> list:
    content = message.get("content")
    return content if isinstance(content, list) else []


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in _content_parts(message) if isinstance(part, dict))


def route_request_from_body(
    body: dict, *, headers: Mapping[str, str], tenant_id: int, team_slug: str, prompt_tokens: int
) -> RouteRequest:
    """The routing features of a validated chat body; body metadata wins over the x-llmops-* headers."""
    metadata = body.get("metadata") or {}
    messages = body.get("messages") or []
    user_messages = [message for message in messages if message.get("role") == "user"]
    return RouteRequest(
        tenant_id=tenant_id,
        requested_model=body["model"],
        prompt_tokens=prompt_tokens,
        task_type=str(metadata.get("task_type") or headers.get(TASK_TYPE_HEADER) or ""),
        user_tier=str(metadata.get("user_tier") or headers.get(USER_TIER_HEADER) or ""),
        team_slug=team_slug,
        has_tools=bool(body.get("tools") or body.get("functions")),
        has_images=any(
            isinstance(part, dict) and part.get("type") == "image_url"
            for message in messages
            for part in _content_parts(message)
        ),
        last_user_message=_message_text(user_messages[-1]) if user_messages else "",
        requested_max_tokens=requested_max_tokens(body),
    )


def route_request_from_embeddings(
    body: dict, *, headers: Mapping[str, str], tenant_id: int, team_slug: str, prompt_tokens: int
) -> RouteRequest:
    """The routing features of a validated embeddings body: the model, the inputs' tokens and the x-llmops-* hints.
    It has no user message, so rules on keywords or a regex never match it."""
    return RouteRequest(
        tenant_id=tenant_id,
        requested_model=body["model"],
        prompt_tokens=prompt_tokens,
        task_type=str(headers.get(TASK_TYPE_HEADER) or ""),
        user_tier=str(headers.get(USER_TIER_HEADER) or ""),
        team_slug=team_slug,
    )


# What a search may take beyond LLMOPS_ROUTING_REGEX_TIMEOUT_MS per character of the message, five times what an
# alternation of words took (2.4 ms on 100 KB, 20 ms on 1 MB): a rule does not stop matching a long prompt, or match
# it only when the machine is idle, and a pattern that backtracks without end is still cut short.
REGEX_TIMEOUT_MS_PER_CHAR = 0.0001


def regex_timeout_ms(text: str) -> float:
    return settings.LLMOPS_ROUTING_REGEX_TIMEOUT_MS + len(text) * REGEX_TIMEOUT_MS_PER_CHAR


def _regex_mismatch(rule: CompiledRule, request: RouteRequest) -> str:
    # Routing runs on the event loop: a tenant's pattern that backtracks without end would stall every tenant's
    # requests on the worker, so the search gives up after a few milliseconds and the rule does not match.
    timeout_ms = regex_timeout_ms(request.last_user_message)
    try:
        found = rule.message_regex.search(request.last_user_message, timeout=timeout_ms / 1000)
    except TimeoutError:
        logger.warning(
            "routing rule %r of tenant %s: its regex ran past %.1f ms on the last user message; the rule does not "
            "match",
            rule.name,
            request.tenant_id,
            timeout_ms,
        )
        return f"regex {rule.message_regex.pattern!r} gave up after {timeout_ms:.1f} ms on the last user message"
    if found is None:
        return f"regex {rule.message_regex.pattern!r} does not match the last user message"
    return ""


def rule_mismatch(rule: CompiledRule, request: RouteRequest, message_folded: str) -> str:
    """Why the rule does not match, or "" when it does. Conditions are checked cheapest first.
    ``message_folded``: the last user message as keyword_text gives it, folded once per request."""
    if rule.requested_models and request.requested_model not in rule.requested_models:
        return f"model {request.requested_model!r} not in {sorted(rule.requested_models)}"
    if rule.task_types and request.task_type.lower() not in rule.task_types:
        return f"task_type {request.task_type!r} not in {sorted(rule.task_types)}"
    if rule.user_tiers and request.user_tier.lower() not in rule.user_tiers:
        return f"user_tier {request.user_tier!r} not in {sorted(rule.user_tiers)}"
    if rule.team_slugs and request.team_slug not in rule.team_slugs:
        return f"team {request.team_slug!r} not in {sorted(rule.team_slugs)}"
    if rule.prompt_tokens_min is not None and request.prompt_tokens < rule.prompt_tokens_min:
        return f"prompt_tokens {request.prompt_tokens} < {rule.prompt_tokens_min}"
    if rule.prompt_tokens_max is not None and request.prompt_tokens > rule.prompt_tokens_max:
        return f"prompt_tokens {request.prompt_tokens} > {rule.prompt_tokens_max}"
    if rule.has_tools is not None and request.has_tools != rule.has_tools:
        return f"has_tools is {request.has_tools}"
    if rule.has_images is not None and request.has_images != rule.has_images:
        return f"has_images is {request.has_images}"
    if rule.keywords and not any(keyword in message_folded for keyword in rule.keywords):
        return f"none of the keywords {list(rule.keywords)} in the last user message"
    if rule.message_regex is not None:
        return _regex_mismatch(rule, request)
    return ""


def _why(rule: CompiledRule, request: RouteRequest) -> str:
    reasons = []
    if rule.requested_models:
        reasons.append(f"model={request.requested_model}")
    if rule.task_types:
        reasons.append(f"task_type={request.task_type}")
    if rule.user_tiers:
        reasons.append(f"user_tier={request.user_tier}")
    if rule.team_slugs:
        reasons.append(f"team={request.team_slug}")
    if rule.prompt_tokens_min is not None or rule.prompt_tokens_max is not None:
        reasons.append(f"prompt_tokens={request.prompt_tokens}")
    if rule.has_tools is not None:
        reasons.append(f"has_tools={request.has_tools}")
    if rule.has_images is not None:
        reasons.append(f"has_images={request.has_images}")
    if rule.keywords:
        reasons.append("keyword")
    if rule.message_regex is not None:
        reasons.append("regex")
    return ",".join(reasons) or "catch-all"


def _allowed_chain(models: tuple[str, ...], catalog: ModelCatalog, tenant_id: int) -> tuple[str, ...]:
    # A model removed from the tenant's access after publishing is skipped rather than tried and refused.
    allowed = catalog.access_for(tenant_id).allowed_models
    return tuple(model for model in models if model in allowed)


def _nothing_available(chain: tuple[str, ...], *, rule_name: str, requested: str) -> RoutingRefusal:
    by = f"routing rule '{rule_name}'" if rule_name else f"alias `{requested}`"
    models = " then ".join(f"`{model}`" for model in dict.fromkeys(chain))
    return RoutingRefusal(
        f"Your routing policy's {by} sends this request to {models}, none of which your key may use now (removed "
        "from your tenant's models or switched off). Name a model, or ask an admin to update the routing policy.",
        status=403,
        code="model_not_allowed",
        param="model",
    )


def route_request(
    policy: CompiledPolicy | None,
    request: RouteRequest,
    catalog: ModelCatalog,
    *,
    trace: bool = False,
    scored: DifficultyScore | None = None,
) -> RouteDecision:
    """Pick the model chain and the caps for a request.

    The first rule (by priority) that matches decides. A rule without a target keeps the requested
    model, or lets the difficulty score pick when the request names an alias. `auto` and aliases
    that no rule resolves are scored too. Raises RoutingRefusal for an alias the policy lacks.
    A model the policy picks that the tenant may no longer use gives way to the first fallback it may (RoutingRefusal
    when none is left); a model the client named is not checked here: the gateway's model resolution refuses it.
    ``scored``: the difficulty score when it is known without the request's message (a replay of a recorded request,
    routing.policy.replay); otherwise it is computed from the request.
    """
    requested = request.requested_model
    steps: list[str] = []
    matched: CompiledRule | None = None
    if policy is not None:
        folded = keyword_text(request.last_user_message) if any(rule.keywords for rule in policy.rules) else ""
        for rule in policy.rules:
            mismatch = rule_mismatch(rule, request, folded)
            if not mismatch:
                matched = rule
                if trace:
                    steps.append(f"rule {rule.name} (priority {rule.priority}) matched: {_why(rule, request)}")
                break
            if trace:
                steps.append(f"rule {rule.name} (priority {rule.priority}) skipped: {mismatch}")
    outcome: RuleOutcome = matched.outcome if matched else NO_OUTCOME
    rule_name = matched.name if matched else ""
    score: DifficultyScore | None = None
    target = outcome.target_model
    # The model is the policy's pick (a rule's target, an alias's), not one the client named.
    picked_by_policy = bool(target)
    alias_note = ""
    if not target:
        alias = policy.aliases.get(requested) if policy is not None else None
        if alias is not None:
            picked_by_policy = True
            score = scored or difficulty_score(
                prompt_tokens=request.prompt_tokens,
                last_user_message=request.last_user_message,
                has_tools=request.has_tools,
                requested_max_tokens=request.requested_max_tokens,
            )
            use_large = score.total >= policy.auto_threshold
            target = alias.large_model if use_large else alias.small_model
            alias_note = (
                f"score={score.total}{'>=' if use_large else '<'}{policy.auto_threshold}"
                f"({score.describe()})->{'large' if use_large else 'small'}"
            )
            if trace:
                steps.append(f"alias {requested}: {alias_note}")
        elif requested == DEFAULT_MODEL_ALIAS:
            target = catalog.access_for(request.tenant_id).default_model or DEFAULT_MODEL_ALIAS
        elif requested == AUTO_ALIAS:
            if policy is not None:
                raise RoutingRefusal(
                    "The model `auto` is not defined by your routing policy; name a model or one of its aliases.",
                    status=400,
                    code="unknown_alias",
                    param="model",
                )
            # Without a policy, `auto` means the tenant's default model.
            target = catalog.access_for(request.tenant_id).default_model or DEFAULT_MODEL_ALIAS
        else:
            target = requested
    fallbacks = _allowed_chain(
        tuple(model for model in outcome.fallback_models if model != target), catalog, request.tenant_id
    )
    unavailable = ""
    if picked_by_policy and target not in catalog.access_for(request.tenant_id).allowed_models:
        # Removed from the tenant's models or switched off after publishing: the first fallback the tenant still has
        # serves, rather than a refusal naming a model the client never asked for.
        if not fallbacks:
            raise _nothing_available((target, *outcome.fallback_models), rule_name=rule_name, requested=requested)
        unavailable, target, fallbacks = target, fallbacks[0], fallbacks[1:]
        if trace:
            steps.append(f"model {unavailable} skipped: the tenant may no longer use it; fallback {target} serves")
    explanation_parts = []
    if rule_name:
        explanation_parts.append(f"rule={rule_name}")
    if alias_note:
        explanation_parts.append(f"alias={requested};{alias_note}")
    if not explanation_parts:
        explanation_parts.append("direct" if policy is not None else "no-policy")
    explanation = f"{' '.join(explanation_parts)} model={target}"
    if unavailable:
        explanation += f" unavailable={unavailable}"
    if policy is not None:
        explanation += f" policy=v{policy.version}"
    return RouteDecision(
        outcome=replace(outcome, target_model=target, fallback_models=fallbacks),
        rule_name=rule_name,
        difficulty=score,
        routed_to_large=policy is not None and target in policy.large_models,
        policy_version=policy.version if policy is not None else None,
        explanation=explanation,
        trace=tuple(steps),
    )
