"""What a quality SLO's automatic action changes in a policy document, as pure functions of the document.

Each takes a document and a rule name ("" for every rule: an SLO on a whole lever) and returns the changed document
with a sentence per change; no sentence means nothing needed changing. The caller (routing.services.
routing_policy_quality_action) publishes the result and applies the same change to the draft, so the next publish
keeps it.
"""

import copy
from collections.abc import Callable

from routing.policy.document import normalized_document

QualityTransform = Callable[[dict, str], tuple[dict, list[str]]]


def _rules(document: dict, rule: str) -> list[dict]:
    return [candidate for candidate in document["rules"] if not rule or candidate["name"] == rule]


def _start(document: dict) -> dict:
    return copy.deepcopy(normalized_document(document))


def _to_large(outcome: dict, small: str, large: str) -> None:
    """The chain becomes the large model, then the old fallbacks, then the small model (an answer when large fails)."""
    fallbacks = [model for model in outcome["fallback_models"] if model not in (large, small)]
    outcome["target_model"], outcome["fallback_models"] = large, [*fallbacks, small]


def routes_to_large(document: dict, rule: str) -> tuple[dict, list[str]]:
    """The rule's requests go to the alias's large model, the reference shadow evaluation compared them with.

    A rule that targets an alias's small model targets its large one. A rule without a target lets the difficulty
    score pick: when it matches one alias only it targets that alias's large model; otherwise (and always for a
    whole lever, whose requests may match no rule) the policy's auto_threshold goes to 0, so every scored request
    goes large.
    """
    document = _start(document)
    aliases = {name: pair for name, pair in document["aliases"].items() if pair["small"] != pair["large"]}
    small_to_large = {pair["small"]: pair["large"] for pair in aliases.values()}
    changes, lower_threshold = [], not rule and bool(aliases)
    for candidate in _rules(document, rule):
        outcome, requested = candidate["outcome"], candidate["match"]["requested_models"]
        target = outcome["target_model"]
        if target in small_to_large:
            _to_large(outcome, target, small_to_large[target])
            changes.append(f"rule {candidate['name']}: target {target} -> {small_to_large[target]}")
        elif not target and len(requested) == 1 and requested[0] in aliases:
            pair = aliases[requested[0]]
            _to_large(outcome, pair["small"], pair["large"])
            changes.append(f"rule {candidate['name']}: target {pair['large']} ({requested[0]}'s large), not the score")
        elif not target and (not requested or any(name in aliases for name in requested)):
            lower_threshold = bool(aliases)
    if lower_threshold and document["auto_threshold"] != 0:
        changes.append(f"auto_threshold {document['auto_threshold']} -> 0: every scored request goes large")
        document["auto_threshold"] = 0
    return document, changes


def semantic_cache_off(document: dict, rule: str) -> tuple[dict, list[str]]:
    """The rule answers from exact cache hits only."""
    document = _start(document)
    changes = []
    for candidate in _rules(document, rule):
        if candidate["outcome"]["semantic_cache"]:
            candidate["outcome"]["semantic_cache"] = False
            changes.append(f"rule {candidate['name']}: semantic cache off")
    return document, changes


def compression_off(document: dict, rule: str) -> tuple[dict, list[str]]:
    """The rule refuses a prompt over its cap (token_cap_exceeded) instead of compressing it."""
    document = _start(document)
    changes = []
    for candidate in _rules(document, rule):
        if candidate["outcome"]["over_cap_action"] == "compress":
            candidate["outcome"]["over_cap_action"] = "reject"
            changes.append(f"rule {candidate['name']}: over the cap is refused, not compressed")
    return document, changes
