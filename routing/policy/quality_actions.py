"""What a quality SLO's automatic action changes in a policy document, as pure functions of the document.

Each takes a document and a rule name ("" for every rule: an SLO on a whole lever) and returns a Transformed: the
changed document, a sentence per change, and a sentence per rule it could not or need not change, saying why. No
change means nothing is published. The caller (routing.services.routing_policy_quality_action) publishes the result.
"""

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from routing.policy.document import normalized_document


@dataclass(frozen=True, slots=True)
class Transformed:
    document: dict
    changes: list[str] = field(default_factory=list)
    # Rules left as they were although the SLO names them: why (already done, or no change is right for them all).
    not_done: list[str] = field(default_factory=list)


QualityTransform = Callable[[dict, str], Transformed]


def _rules(document: dict, rule: str) -> list[dict]:
    return [candidate for candidate in document["rules"] if not rule or candidate["name"] == rule]


def _start(document: dict, rule: str) -> tuple[dict, list[dict], list[str]]:
    document = copy.deepcopy(normalized_document(document))
    candidates = _rules(document, rule)
    return document, candidates, [] if candidates or not rule else [f"no rule '{rule}' in the live policy"]


def _to_large(outcome: dict, smalls: list[str], large: str) -> None:
    """The chain becomes the large model, then the old fallbacks, then the models it replaces (an answer when large
    fails)."""
    fallbacks = [model for model in outcome["fallback_models"] if model != large and model not in smalls]
    outcome["target_model"], outcome["fallback_models"] = (
        large,
        [*fallbacks, *(model for model in smalls if model != large)],
    )


# What sending one rule's requests to their reference takes.
TARGET, DROP, ALREADY, CANNOT = "target", "drop", "already", "cannot"


@dataclass(frozen=True, slots=True)
class _Plan:
    kind: str
    target: str = ""
    why: str = ""


def _plan(candidate: dict, aliases: dict[str, dict], all_aliases: dict, references: frozenset[str]) -> _Plan:
    """The reference shadow evaluation compares a routed answer with is the large model of the alias the request
    named, or the model it named (routing's baseline); a rule's requests go there when one change is right for every
    request the rule matches."""
    target, requested = candidate["outcome"]["target_model"], candidate["match"]["requested_models"]
    own = [name for name in requested if name in aliases]
    named = [name for name in requested if name not in all_aliases]
    if requested and not own:
        if target and (target not in named or len(set(named)) > 1):
            return _Plan(DROP)
        return _Plan(ALREADY, why="its requests already keep the model they name")
    larges = sorted({aliases[name]["large"] for name in own})
    if own and not named and len(larges) == 1:
        if target == larges[0]:
            return _Plan(ALREADY, why=f"it already targets {target}, the large model of {', '.join(own)}")
        why = "" if target else f"{', '.join(own)}'s large, not the score"
        return _Plan(TARGET, target=larges[0], why=why)
    # Requests of several aliases, or of aliases and named models (a catch-all): no alias settles the reference.
    if not target:
        return _Plan(
            CANNOT,
            why="the difficulty score picks for its requests of several aliases, or of an alias while requests naming "
            "a model keep it; one target would move requests it serves well now, and lowering the policy's threshold "
            "would move every rule's: not done. Give the alias a rule of its own, or watch the whole lever",
        )
    if len(references) == 1:
        (reference,) = references
        if reference == target:
            return _Plan(ALREADY, why=f"it already targets {target}, the model its evaluations were judged against")
        return _Plan(TARGET, target=reference, why="the model its evaluations were judged against")
    judged = f"several models ({', '.join(sorted(references))})" if references else "no model in the window"
    return _Plan(
        CANNOT,
        why=f"it serves requests of several aliases or models, and its evaluations were judged against {judged}: "
        "no one target is right for all of them: not done",
    )


def _drop_target(outcome: dict) -> None:
    old = outcome["target_model"]
    outcome["target_model"] = ""
    outcome["fallback_models"] = [*(model for model in outcome["fallback_models"] if model != old), old]


def routes_to_large(
    document: dict, rule: str, *, references: Mapping[str, frozenset[str]] | None = None
) -> Transformed:
    """Each rule's requests go to their reference, the model shadow evaluation compared them with.

    `references`: by rule, the models its evaluations in the SLO's window were judged against, read where no alias
    settles the reference. For one rule:

    - it matches requests naming an alias (one large model between the rule's aliases): it targets that large model,
      with its old target (or the alias's small model) as the last fallback;
    - it matches requests naming models only: its downgrading target is dropped, so each request keeps the model it
      names (the old target becomes the last fallback);
    - it has a target, matches several aliases or a catch-all's requests, and its evaluations were all judged against
      one model: it targets that model;
    - otherwise no one change is right for every request it matches (several aliases' by score, or a catch-all's by
      score whose requests naming a model keep it): nothing, and the alert says why. The policy's `auto_threshold` is
      never lowered for one rule: it would move every rule's scored requests.

    On the whole lever (rule ""), every rule as above, except that a rule no one target fits loses a target that is
    not an alias's large model, and `auto_threshold` becomes 0: every request the difficulty score routes, whatever
    rule matched it (or none), goes to its own alias's large model, and requests naming a model keep it. A named-model
    rule whose target is an alias's large model keeps it there (it sends them up, not down).
    """
    document, candidates, not_done = _start(document, rule)
    all_aliases = document["aliases"]
    aliases = {name: pair for name, pair in all_aliases.items() if pair["small"] != pair["large"]}
    larges = {pair["large"] for pair in aliases.values()}
    changes = []
    for candidate in candidates:
        name, outcome = candidate["name"], candidate["outcome"]
        old = outcome["target_model"]
        plan = _plan(candidate, aliases, all_aliases, (references or {}).get(name, frozenset()))
        if plan.kind == TARGET:
            own = [alias for alias in candidate["match"]["requested_models"] if alias in aliases]
            _to_large(outcome, [old] if old else sorted({aliases[alias]["small"] for alias in own}), plan.target)
            moved = f"{old} -> {plan.target}" if old else plan.target
            changes.append(f"rule {name}: target {moved}{f' ({plan.why})' if plan.why else ''}")
        elif (plan.kind == DROP and (rule or old not in larges)) or (
            plan.kind == CANNOT and not rule and old and old not in larges
        ):
            _drop_target(outcome)
            changes.append(
                f"rule {name}: target {old} dropped: each request keeps the model it names, or gets its alias's by "
                f"score ({old} now the last fallback)"
            )
        elif rule:
            not_done.append(f"rule {name}: {plan.why}")
    if not rule and aliases and document["auto_threshold"] != 0:
        changes.append(
            f"auto_threshold {document['auto_threshold']} -> 0: every request the difficulty score routes goes to "
            "its alias's large model"
        )
        document["auto_threshold"] = 0
    return Transformed(document, changes, not_done)


def semantic_cache_off(document: dict, rule: str) -> Transformed:
    """The rule answers from exact cache hits only."""
    document, candidates, not_done = _start(document, rule)
    changes = []
    for candidate in candidates:
        if candidate["outcome"]["semantic_cache"]:
            candidate["outcome"]["semantic_cache"] = False
            changes.append(f"rule {candidate['name']}: semantic cache off")
        elif rule:
            not_done.append(f"rule {candidate['name']}: its semantic cache is already off")
    return Transformed(document, changes, not_done)


def compression_off(document: dict, rule: str) -> Transformed:
    """The rule refuses a prompt over its cap (token_cap_exceeded) instead of compressing it."""
    document, candidates, not_done = _start(document, rule)
    changes = []
    for candidate in candidates:
        if candidate["outcome"]["over_cap_action"] == "compress":
            candidate["outcome"]["over_cap_action"] = "reject"
            changes.append(f"rule {candidate['name']}: over the cap is refused, not compressed")
        elif rule:
            not_done.append(f"rule {candidate['name']}: it already refuses a prompt over its cap")
    return Transformed(document, changes, not_done)
