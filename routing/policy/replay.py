"""Routing replayed over recorded requests whose features are partly unknown: the what-if of a policy before it is
published (billing.finance.whatif).

A request rebuilt from its ledger row lacks what the ledger does not keep: always its last user message (a rule's
keywords and regex, the difficulty score's code, maths and multi-step points) and the max_tokens it asked for; on rows
written before the ledger kept them, or of requests that never reached routing, its task type, user tier, tools and
images too. A rule that reads an unknown feature is neither matched nor skipped: the request is `undecided` from
there on, naming the rule and what it reads, instead of guessed. A known condition that fails still skips the rule,
and the difficulty score decides whenever its known points alone put it on one side of the threshold.
"""

from dataclasses import dataclass, replace
from enum import StrEnum

from routing.catalog import DEFAULT_MODEL_ALIAS, ModelCatalog
from routing.policy.document import CompiledPolicy, CompiledRule, keyword_text
from routing.policy.engine import RouteRequest, route_request, rule_mismatch
from routing.policy.errors import RoutingRefusal
from routing.policy.scoring import (
    CODE_POINTS,
    LENGTH_POINTS_MAX,
    MATH_POINTS,
    MULTI_STEP_POINTS,
    OUTPUT_POINTS_MAX,
    TOKENS_PER_LENGTH_POINT,
    TOOLS_POINTS,
    DifficultyScore,
)


class Feature(StrEnum):
    TASK_TYPE = "task_type"
    USER_TIER = "user_tier"
    HAS_TOOLS = "has_tools"
    HAS_IMAGES = "has_images"
    PROMPT_TOKENS = "prompt_tokens"
    MESSAGE = "message"  # the last user message: keywords, message_regex, the score's code, maths and multi-step points
    MAX_TOKENS = "max_tokens"  # the score's output points


# Unknown on a ledger row that does not record its routing features.
HINTS = frozenset({Feature.TASK_TYPE, Feature.USER_TIER, Feature.HAS_TOOLS, Feature.HAS_IMAGES})
# What a replay from the ledger alone never sees.
LEDGER_BLIND = frozenset({Feature.MESSAGE, Feature.MAX_TOKENS})

# A rule's conditions on each feature, as CompiledRule fields, and their value when the condition is left out.
_CONDITIONS = {
    Feature.TASK_TYPE: {"task_types": frozenset()},
    Feature.USER_TIER: {"user_tiers": frozenset()},
    Feature.HAS_TOOLS: {"has_tools": None},
    Feature.HAS_IMAGES: {"has_images": None},
    Feature.PROMPT_TOKENS: {"prompt_tokens_min": None, "prompt_tokens_max": None},
    Feature.MESSAGE: {"keywords": (), "message_regex": None},
}


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """A recorded request as routing reads it: ``features`` hold placeholders for what is in ``unknown``."""

    features: RouteRequest
    unknown: frozenset[Feature] = frozenset()
    # The alias's score as routing computed it when the request was served, where the ledger kept one.
    difficulty_score: int | None = None


@dataclass(frozen=True, slots=True)
class ReplayDecision:
    """Where a policy sends a recorded request: a rule (or none) and a model, a refusal, or undecided and why."""

    rule: str = ""
    model: str = ""
    refused: str = ""  # the code of the error the gateway would answer
    undecided: str = ""


def _unknown_reads(rule: CompiledRule, unknown: frozenset[Feature]) -> list[Feature]:
    return [
        feature
        for feature, condition in _CONDITIONS.items()
        if feature in unknown and any(getattr(rule, name) != empty for name, empty in condition.items())
    ]


def _known_part(rule: CompiledRule, features: list[Feature]) -> CompiledRule:
    """The rule without its conditions on these features."""
    return replace(rule, **{name: empty for feature in features for name, empty in _CONDITIONS[feature].items()})


def _score_bounds(request: ReplayRequest) -> tuple[int, int]:
    """The lowest and highest difficulty score the request can have, from the points its known features give."""
    features, unknown = request.features, request.unknown
    if Feature.PROMPT_TOKENS in unknown:
        low, high = 0, LENGTH_POINTS_MAX
    else:
        low = high = min(LENGTH_POINTS_MAX, features.prompt_tokens // TOKENS_PER_LENGTH_POINT)
    if Feature.HAS_TOOLS in unknown:
        high += TOOLS_POINTS
    elif features.has_tools:
        low, high = low + TOOLS_POINTS, high + TOOLS_POINTS
    high += CODE_POINTS + MATH_POINTS + MULTI_STEP_POINTS + OUTPUT_POINTS_MAX
    return min(low, 100), min(high, 100)


def _known_score(request: ReplayRequest, threshold: int) -> DifficultyScore | None:
    """A score on the right side of the threshold when the side is known without the message; None when it is not."""
    if request.difficulty_score is not None:
        return DifficultyScore(total=request.difficulty_score, points={"recorded": request.difficulty_score})
    low, high = _score_bounds(request)
    if low >= threshold:
        return DifficultyScore(total=low, points={"at_least": low})
    if high < threshold:
        return DifficultyScore(total=high, points={"at_most": high})
    return None


def _needs_score(policy: CompiledPolicy, rule: CompiledRule | None, requested: str) -> bool:
    return not (rule is not None and rule.outcome.target_model) and requested in policy.aliases


def prompt_token_cuts(*policies: CompiledPolicy | None) -> list[int]:
    """Where a prompt's token count can change a decision of these policies, highest first: a rule's bounds, a
    rejecting cap, and each hundred tokens up to the score's length maximum.

    Routing reads a count only as "at least c" for these c, so a count and the highest cut at or below it (0 below
    them all) route alike: the what-if groups recorded requests by that cut instead of by their exact count."""
    cuts = set(range(TOKENS_PER_LENGTH_POINT, LENGTH_POINTS_MAX * TOKENS_PER_LENGTH_POINT + 1, TOKENS_PER_LENGTH_POINT))
    for policy in policies:
        for rule in policy.rules if policy is not None else ():
            if rule.prompt_tokens_min is not None:
                cuts.add(rule.prompt_tokens_min)
            if rule.prompt_tokens_max is not None:
                cuts.add(rule.prompt_tokens_max + 1)
            if rule.outcome.prompt_token_cap is not None:
                cuts.add(rule.outcome.prompt_token_cap + 1)
    return sorted(cuts, reverse=True)


def difficulty_score_cuts(*policies: CompiledPolicy | None) -> list[int]:
    """Where a recorded difficulty score can change a decision of these policies, highest first: their thresholds.
    A score and the highest cut at or below it (0 below them all) route alike, as prompt_token_cuts says of counts."""
    return sorted({policy.auto_threshold for policy in policies if policy is not None}, reverse=True)


def replay_route(policy: CompiledPolicy | None, request: ReplayRequest, catalog: ModelCatalog) -> ReplayDecision:
    """Route a recorded request as the gateway would under ``policy``, as far as its known features tell."""
    features, unknown = request.features, request.unknown
    matched: CompiledRule | None = None
    scored: DifficultyScore | None = None
    if policy is not None:
        folded = keyword_text(features.last_user_message) if any(rule.keywords for rule in policy.rules) else ""
        for rule in policy.rules:
            unread = _unknown_reads(rule, unknown)
            if rule_mismatch(_known_part(rule, unread) if unread else rule, features, folded):
                continue
            if unread:
                return ReplayDecision(undecided=f"rule {rule.name} reads {' and '.join(unread)}")
            matched = rule
            break
        # Only the rule that decides is left, so the engine resolves its outcome without meeting an unknown again.
        policy = replace(policy, rules=(matched,) if matched else ())
        if _needs_score(policy, matched, features.requested_model) and unknown & {
            Feature.MESSAGE,
            Feature.MAX_TOKENS,
            Feature.PROMPT_TOKENS,
            Feature.HAS_TOOLS,
        }:
            scored = _known_score(request, policy.auto_threshold)
            if scored is None:
                return ReplayDecision(
                    rule=matched.name if matched else "",
                    undecided=f"alias {features.requested_model}: the difficulty score reads the message",
                )
    try:
        decision = route_request(policy, features, catalog, scored=scored)
    except RoutingRefusal as refusal:
        return ReplayDecision(rule=matched.name if matched else "", refused=refusal.code)
    outcome = decision.outcome
    if outcome.prompt_token_cap is not None and outcome.over_cap_action == "reject":
        if Feature.PROMPT_TOKENS in unknown:
            return ReplayDecision(
                rule=decision.rule_name, undecided=f"rule {decision.rule_name}'s prompt cap reads prompt_tokens"
            )
        if features.prompt_tokens > outcome.prompt_token_cap:
            return ReplayDecision(rule=decision.rule_name, refused="token_cap_exceeded")
    access = catalog.access_for(features.tenant_id)
    model = outcome.target_model
    if model == DEFAULT_MODEL_ALIAS:
        if access.default_model is None:
            return ReplayDecision(rule=decision.rule_name, refused="no_default_model")
        model = access.default_model
    if model not in catalog.models:
        return ReplayDecision(rule=decision.rule_name, refused="model_not_found")
    if model not in access.allowed_models:
        return ReplayDecision(rule=decision.rule_name, refused="model_not_allowed")
    return ReplayDecision(rule=decision.rule_name, model=model)
