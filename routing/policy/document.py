"""The published policy document and its compiled, query-free form.

A document is plain JSON so a version row holds the whole policy and a rollback is a copy:

    {"schema": 1, "auto_threshold": 50, "injection_guard_action": "flag",
     "aliases": {"auto": {"small": "m-small", "large": "m-large"}},
     "rules": [{"priority": 10, "name": "...", "match": {...}, "outcome": {...}}]}
"""

import unicodedata
from dataclasses import asdict, dataclass, fields

import regex

from routing.providers.prompt_cache import OFF as PROVIDER_CACHE_OFF
from routing.providers.prompt_cache import PROVIDER_CACHE_MODES

SCHEMA_VERSION = 1
AUTO_ALIAS = "auto"
EMPTY_MATCH = {
    "requested_models": [],
    "task_types": [],
    "user_tiers": [],
    "team_slugs": [],
    "prompt_tokens_min": None,
    "prompt_tokens_max": None,
    "has_tools": None,
    "has_images": None,
    "keywords": [],
    "message_regex": "",
}


@dataclass(frozen=True, slots=True)
class Alias:
    small_model: str
    large_model: str


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """What a rule decides when it matches: the one list of a rule's outcome. It is the ``outcome`` of a rule in the
    published document, the outcome columns of a draft RoutingRule, and, resolved for one request, the outcome of
    a RouteDecision. The defaults are a rule that decides nothing: no target, no fallbacks, no caps, no caching."""

    target_model: str = ""
    fallback_models: tuple[str, ...] = ()
    prompt_token_cap: int | None = None
    over_cap_action: str = "reject"
    max_tokens_cap: int | None = None
    default_max_tokens: int | None = None
    cache_ttl_seconds: int | None = None
    cache_nondeterministic: bool = False
    # auto: the provider's prompt cache gets checkpoints on the request's stable prefix where it has one
    # (routing.providers.prompt_cache); off, unless a rule opts in (the provider's cache is shared across tenants):
    # none are added (a client's own are still sent).
    provider_cache: str = PROVIDER_CACHE_OFF
    # Whether the cache may answer from a semantic neighbour (exact hits are unaffected): on by default; a quality
    # SLO's automatic action turns it off for a rule whose semantic hits disagree with fresh answers.
    semantic_cache: bool = True

    @classmethod
    def from_document(cls, outcome: dict) -> "RuleOutcome":
        """Keys this code does not know are left out: a version published by a later release, read by a process still
        on this one during a rolling deploy, routes as far as this release can, rather than not at all."""
        known = {name: value for name, value in outcome.items() if name in OUTCOME_FIELDS}
        return cls(**{**known, "fallback_models": tuple(outcome["fallback_models"])})

    def as_document(self) -> dict:
        return {**asdict(self), "fallback_models": list(self.fallback_models)}


OUTCOME_FIELDS = tuple(field.name for field in fields(RuleOutcome))
NO_OUTCOME = RuleOutcome()
EMPTY_OUTCOME = NO_OUTCOME.as_document()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    priority: int
    name: str
    requested_models: frozenset[str]
    task_types: frozenset[str]
    user_tiers: frozenset[str]
    team_slugs: frozenset[str]
    prompt_tokens_min: int | None
    prompt_tokens_max: int | None
    has_tools: bool | None
    has_images: bool | None
    keywords: tuple[str, ...]  # as keyword_text gives them
    message_regex: regex.Pattern | None
    outcome: RuleOutcome


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    version: int
    auto_threshold: int
    injection_guard_action: str
    aliases: dict[str, Alias]
    rules: tuple[CompiledRule, ...]

    @property
    def large_models(self) -> frozenset[str]:
        """Models that count as `routed to large`: an alias's large model where it differs from its small one."""
        return frozenset(alias.large_model for alias in self.aliases.values() if alias.large_model != alias.small_model)


def normalized_document(document: dict) -> dict:
    """The document with every field present, so diffs and compilation never meet a missing key."""
    rules = []
    for rule in document.get("rules") or []:
        rules.append(
            {
                "priority": rule["priority"],
                "name": rule["name"],
                "match": {**EMPTY_MATCH, **(rule.get("match") or {})},
                "outcome": {**EMPTY_OUTCOME, **(rule.get("outcome") or {})},
            }
        )
    return {
        "schema": SCHEMA_VERSION,
        "auto_threshold": document.get("auto_threshold", 50),
        "injection_guard_action": document.get("injection_guard_action", "flag"),
        "aliases": {name: dict(models) for name, models in sorted((document.get("aliases") or {}).items())},
        "rules": sorted(rules, key=lambda rule: (rule["priority"], rule["name"])),
    }


# Raised for an invalid message_regex.
RegexError = regex.error


def compile_regex(pattern: str) -> regex.Pattern:
    """A rule's message_regex, compiled with the `regex` module, whose searches take a timeout (the engine's). Its
    version 0 reads a pattern as Python's re does (and takes a few constructs more, such as \\p{L}), with the flags
    re had, so a pattern published before matches as it did."""
    return regex.compile(pattern, regex.IGNORECASE | regex.V0)


def keyword_text(text: str) -> str:
    """Text as a rule's keywords and the message are compared: NFC, case-folded, and the dotted i that folding makes
    of a Turkish `İ` an `i`, so `straße` finds `STRASSE`, a composed `café` a decomposed one, `istanbul` `İSTANBUL`."""
    return unicodedata.normalize("NFC", text).casefold().replace("i\u0307", "i")


def compile_policy(document: dict, *, version: int = 0) -> CompiledPolicy:
    """Raises RegexError for an invalid regex; publish validation refuses those before they reach here."""
    document = normalized_document(document)
    rules = []
    for rule in document["rules"]:
        match, outcome = rule["match"], rule["outcome"]
        rules.append(
            CompiledRule(
                priority=rule["priority"],
                name=rule["name"],
                requested_models=frozenset(match["requested_models"]),
                task_types=frozenset(value.lower() for value in match["task_types"]),
                user_tiers=frozenset(value.lower() for value in match["user_tiers"]),
                team_slugs=frozenset(match["team_slugs"]),
                prompt_tokens_min=match["prompt_tokens_min"],
                prompt_tokens_max=match["prompt_tokens_max"],
                has_tools=match["has_tools"],
                has_images=match["has_images"],
                keywords=tuple(keyword_text(keyword) for keyword in match["keywords"]),
                message_regex=compile_regex(match["message_regex"]) if match["message_regex"] else None,
                outcome=RuleOutcome.from_document(outcome),
            )
        )
    return CompiledPolicy(
        version=version,
        auto_threshold=document["auto_threshold"],
        injection_guard_action=document["injection_guard_action"],
        aliases={name: Alias(models["small"], models["large"]) for name, models in document["aliases"].items()},
        rules=tuple(rules),
    )


# The outcome's token caps, none of which can be 0 (the draft's columns allow it), and what 0 would do.
TOKEN_CAPS_AT_LEAST_ONE = {
    "prompt_token_cap": "0 would refuse every prompt",
    "max_tokens_cap": "0 would send max_tokens 0, which providers refuse",
    "default_max_tokens": "0 would send max_tokens 0, which providers refuse",
}


def policy_document_errors(
    document: dict, *, allowed_models: frozenset[str], known_models: frozenset[str]
) -> list[str]:
    """Every reason the document cannot be published, each naming its rule or alias; empty when it can."""
    document = normalized_document(document)
    errors = []
    aliases = document["aliases"]
    for name, models in aliases.items():
        for size in ("small", "large"):
            if models[size] not in allowed_models:
                errors.append(f"alias '{name}': the {size} model '{models[size]}' is not allowed for this tenant")
    seen_priorities: dict[int, str] = {}
    seen_names: set[str] = set()
    for rule in document["rules"]:
        name, match, outcome = rule["name"], rule["match"], rule["outcome"]
        label = f"rule '{name}'"
        if name in seen_names:
            errors.append(f"{label}: another rule has the same name")
        seen_names.add(name)
        if rule["priority"] in seen_priorities:
            errors.append(
                f"{label}: priority {rule['priority']} is also used by rule '{seen_priorities[rule['priority']]}'"
            )
        else:
            seen_priorities[rule["priority"]] = name
        for requested in match["requested_models"]:
            if requested not in aliases and requested not in known_models:
                errors.append(f"{label}: '{requested}' is neither an alias of this policy nor a model in the catalog")
        low, high = match["prompt_tokens_min"], match["prompt_tokens_max"]
        if low is not None and high is not None and low > high:
            errors.append(f"{label}: prompt_tokens_min {low} is above prompt_tokens_max {high}")
        if match["message_regex"]:
            try:
                compile_regex(match["message_regex"])
            except RegexError as error:
                errors.append(f"{label}: invalid regex {match['message_regex']!r}: {error}")
        target = outcome["target_model"]
        if target and target not in allowed_models:
            errors.append(f"{label}: target model '{target}' is not allowed for this tenant")
        chain = [target, *outcome["fallback_models"]] if target else list(outcome["fallback_models"])
        seen_in_chain: set[str] = set()
        for model in outcome["fallback_models"]:
            if model not in allowed_models:
                errors.append(f"{label}: fallback model '{model}' is not allowed for this tenant")
        for model in chain:
            if model in seen_in_chain:
                errors.append(f"{label}: '{model}' appears twice in the chain {' -> '.join(chain)}, a cycle")
            seen_in_chain.add(model)
        if outcome["over_cap_action"] not in ("reject", "compress"):
            errors.append(f"{label}: over_cap_action must be reject or compress")
        if not isinstance(outcome["semantic_cache"], bool):
            errors.append(f"{label}: semantic_cache must be true or false")
        if outcome["provider_cache"] not in PROVIDER_CACHE_MODES:
            errors.append(f"{label}: provider_cache must be {' or '.join(PROVIDER_CACHE_MODES)}")
        for field, zero_means in TOKEN_CAPS_AT_LEAST_ONE.items():
            if outcome[field] is not None and outcome[field] < 1:
                errors.append(f"{label}: {field} must be at least 1 token or empty for none ({zero_means})")
        cap, default = outcome["max_tokens_cap"], outcome["default_max_tokens"]
        if cap is not None and default is not None and default > cap:
            errors.append(f"{label}: default_max_tokens {default} is above max_tokens_cap {cap}")
    if document["injection_guard_action"] not in ("none", "flag", "block"):
        errors.append("injection_guard_action must be none, flag or block")
    if not 0 <= document["auto_threshold"] <= 100:
        errors.append("auto_threshold must be between 0 and 100")
    return errors


def document_diff(before: dict | None, after: dict) -> dict:
    """What a publish changed: settings and aliases as [before, after], rules added, removed and changed by field."""
    before = normalized_document(before or {})
    after = normalized_document(after)
    diff: dict = {}
    settings_changed = {
        key: [before[key], after[key]]
        for key in ("auto_threshold", "injection_guard_action")
        if before[key] != after[key]
    }
    if settings_changed:
        diff["settings"] = settings_changed
    aliases_changed = {
        name: [before["aliases"].get(name), after["aliases"].get(name)]
        for name in sorted(before["aliases"].keys() | after["aliases"].keys())
        if before["aliases"].get(name) != after["aliases"].get(name)
    }
    if aliases_changed:
        diff["aliases"] = aliases_changed
    rules_before = {rule["name"]: _flat_rule(rule) for rule in before["rules"]}
    rules_after = {rule["name"]: _flat_rule(rule) for rule in after["rules"]}
    added = sorted(rules_after.keys() - rules_before.keys())
    removed = sorted(rules_before.keys() - rules_after.keys())
    changed = {}
    for name in sorted(rules_before.keys() & rules_after.keys()):
        fields = {
            key: [rules_before[name][key], rules_after[name][key]]
            for key in rules_after[name]
            if rules_before[name][key] != rules_after[name][key]
        }
        if fields:
            changed[name] = fields
    if added:
        diff["rules_added"] = added
    if removed:
        diff["rules_removed"] = removed
    if changed:
        diff["rules_changed"] = changed
    return diff


def _flat_rule(rule: dict) -> dict:
    return {"priority": rule["priority"], **rule["match"], **rule["outcome"]}
