"""Between a policy's draft rows and its JSON document (these read and write the database)."""

from routing.models import Model, RoutingAlias, RoutingPolicy, RoutingRule
from routing.policy.document import OUTCOME_FIELDS, normalized_document


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _join(values: list[str]) -> str:
    return ", ".join(values)


def _outcome_of(rule: RoutingRule) -> dict:
    """A draft rule's outcome columns as a document's outcome: the target by name, the fallbacks as a list."""
    return {
        **{name: getattr(rule, name) for name in OUTCOME_FIELDS},
        "target_model": rule.target_model.name if rule.target_model else "",
        "fallback_models": _split(rule.fallback_models),
    }


def _outcome_columns(outcome: dict, models: dict[str, Model]) -> dict:
    """A document's outcome as a draft rule's columns."""
    return {
        **{name: outcome[name] for name in OUTCOME_FIELDS},
        "target_model": models.get(outcome["target_model"]),
        "fallback_models": _join(outcome["fallback_models"]),
    }


def policy_draft_document(*, policy: RoutingPolicy) -> dict:
    aliases = {
        alias.name: {"small": alias.small_model.name, "large": alias.large_model.name}
        for alias in policy.aliases.select_related("small_model", "large_model")
    }
    rules = [
        {
            "priority": rule.priority,
            "name": rule.name,
            "match": {
                "requested_models": _split(rule.requested_models),
                "task_types": _split(rule.task_types),
                "user_tiers": _split(rule.user_tiers),
                "team_slugs": _split(rule.team_slugs),
                "prompt_tokens_min": rule.prompt_tokens_min,
                "prompt_tokens_max": rule.prompt_tokens_max,
                "has_tools": rule.has_tools,
                "has_images": rule.has_images,
                "keywords": _split(rule.keywords),
                "message_regex": rule.message_regex,
            },
            "outcome": _outcome_of(rule),
        }
        for rule in policy.rules.select_related("target_model")
    ]
    return normalized_document(
        {
            "auto_threshold": policy.auto_threshold,
            "injection_guard_action": policy.injection_guard_action,
            "aliases": aliases,
            "rules": rules,
        }
    )


def policy_draft_replace(*, policy: RoutingPolicy, document: dict) -> None:
    """Make the draft say exactly what the document says (used by rollback and the default template)."""
    document = normalized_document(document)
    names = {name for models in document["aliases"].values() for name in models.values()}
    names |= {rule["outcome"]["target_model"] for rule in document["rules"] if rule["outcome"]["target_model"]}
    models = {model.name: model for model in Model.objects.filter(name__in=names)}
    policy.auto_threshold = document["auto_threshold"]
    policy.injection_guard_action = document["injection_guard_action"]
    policy.save(update_fields=["auto_threshold", "injection_guard_action", "updated_at"])
    policy.aliases.all().delete()
    policy.rules.all().delete()
    RoutingAlias.objects.bulk_create(
        RoutingAlias(policy=policy, name=name, small_model=models[pair["small"]], large_model=models[pair["large"]])
        for name, pair in document["aliases"].items()
    )
    rules = []
    for rule in document["rules"]:
        match = rule["match"]
        rules.append(
            RoutingRule(
                policy=policy,
                priority=rule["priority"],
                name=rule["name"],
                requested_models=_join(match["requested_models"]),
                task_types=_join(match["task_types"]),
                user_tiers=_join(match["user_tiers"]),
                team_slugs=_join(match["team_slugs"]),
                prompt_tokens_min=match["prompt_tokens_min"],
                prompt_tokens_max=match["prompt_tokens_max"],
                has_tools=match["has_tools"],
                has_images=match["has_images"],
                keywords=_join(match["keywords"]),
                message_regex=match["message_regex"],
                **_outcome_columns(rule["outcome"], models),
            )
        )
    RoutingRule.objects.bulk_create(rules)
