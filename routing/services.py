from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from core.crypto import encrypt_secret
from core.outbound import outbound_url_validate
from routing.models import (
    InjectionGuardAction,
    Model,
    ModelKind,
    Provider,
    ProviderKind,
    RoutingPolicy,
    RoutingPolicyAudit,
    RoutingPolicyAuditAction,
    RoutingPolicyVersion,
    TenantModelAccess,
)
from routing.policy.document import AUTO_ALIAS, document_diff, normalized_document, policy_document_errors
from routing.policy.drafts import policy_draft_document, policy_draft_replace
from routing.policy.quality_actions import QualityTransform
from routing.prices import model_price_set
from tenants.models import Tenant

DEFAULT_PROMPT_TOKEN_CAP = 4000
# The template caches deterministic answers (exact and semantic) for an hour.
# The demo's policy caches deterministic answers for an hour; new tenants opt in per rule, because a
# cacheable miss pays an embedding (see README, Performance).
DEMO_CACHE_TTL_SECONDS = 3600


def provider_create(
    *,
    name: str,
    base_url: str,
    kind: str = ProviderKind.OPENAI,
    credential: str = "",
    credential_env_var: str = "",
    timeout_seconds: Decimal = Decimal("60"),
    region: str = "",
) -> Provider:
    provider = Provider(
        name=name,
        kind=kind,
        base_url=base_url,
        credential_env_var=credential_env_var,
        timeout_seconds=timeout_seconds,
        region=region,
    )
    if credential:
        provider.credential_encrypted = encrypt_secret(credential)
    if base_url:
        outbound_url_validate(base_url, field="base_url")
    provider.full_clean()
    provider.save()
    return provider


def provider_base_url_set(*, provider: Provider, base_url: str) -> Provider:
    """Point the provider at another URL; saves nothing when it is already there."""
    if provider.base_url == base_url:
        return provider
    outbound_url_validate(base_url, field="base_url")
    provider.base_url = base_url
    provider.full_clean()
    provider.save(update_fields=["base_url"])
    return provider


def provider_credential_set(*, provider: Provider, credential: str) -> Provider:
    """Store a new credential, encrypted. An empty one clears it."""
    provider.credential_encrypted = encrypt_secret(credential) if credential else ""
    provider.save(update_fields=["credential_encrypted"])
    return provider


@transaction.atomic
def model_create(
    *,
    name: str,
    provider: Provider,
    upstream_name: str,
    input_price_per_million: Decimal,
    cached_input_price_per_million: Decimal,
    output_price_per_million: Decimal,
    cache_write_price_per_million: Decimal | None = None,
    context_window: int = 128_000,
    max_output_tokens: int | None = None,
    kind: str = ModelKind.CHAT,
    actor=None,
    price_source: str = "created with the model",
    price_effective_from: datetime | None = None,
) -> Model:
    """A catalog model with its first price version, in force from ``price_effective_from`` (default: from its
    creation); the gateway serves it once its prices are in force."""
    model = Model(
        name=name,
        provider=provider,
        upstream_name=upstream_name,
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        kind=kind,
    )
    model.full_clean()
    model.save()
    model_price_set(
        model=model,
        prices={
            "input_price_per_million": input_price_per_million,
            "cached_input_price_per_million": cached_input_price_per_million,
            "output_price_per_million": output_price_per_million,
            "cache_write_price_per_million": cache_write_price_per_million,
        },
        effective_from=price_effective_from or model.created_at,
        source=price_source,
        actor=actor,
    )
    return model


@transaction.atomic
def tenant_model_access_set(
    *, tenant: Tenant, allowed_models: list[Model], default_model: Model | None
) -> TenantModelAccess:
    if default_model is not None and default_model not in allowed_models:
        raise ValidationError(f"the default model {default_model.name} must be one of the allowed models")
    if default_model is not None and default_model.kind != ModelKind.CHAT:
        raise ValidationError(f"the default model {default_model.name} must be a chat model")
    access, _ = TenantModelAccess.objects.for_tenant(tenant).get_or_create(tenant=tenant)
    access.default_model = default_model
    access.save()
    access.allowed_models.set(allowed_models)
    return access


def routing_policy_create(
    *, tenant: Tenant, auto_threshold: int = 50, injection_guard_action: str = InjectionGuardAction.FLAG
) -> RoutingPolicy:
    """An empty draft; nothing changes for the tenant's traffic until it is published."""
    if RoutingPolicy.objects.for_tenant(tenant).exists():
        raise ValidationError(f"tenant '{tenant.slug}' already has a routing policy")
    policy = RoutingPolicy(tenant=tenant, auto_threshold=auto_threshold, injection_guard_action=injection_guard_action)
    policy.full_clean()
    policy.save()
    return policy


def _tenant_model_names(tenant: Tenant) -> tuple[frozenset[str], frozenset[str]]:
    """(allowed for the tenant, known in the catalog) model names."""
    allowed = frozenset(Model.objects.filter(allowed_for__tenant=tenant, is_active=True).values_list("name", flat=True))
    return allowed, frozenset(Model.objects.values_list("name", flat=True))


def routing_policy_document_errors(*, tenant: Tenant, document) -> list[str]:
    """Every reason the document could not be published for the tenant; empty when it could. A value that is not a
    policy document at all (a policy_whatif draft file) gets one reason, naming what is wrong with it."""
    if not isinstance(document, dict):
        return ["a policy document is a JSON object with `aliases` and `rules`"]
    allowed, known = _tenant_model_names(tenant)
    try:
        errors = _document_list_errors(document)
        return errors or policy_document_errors(document, allowed_models=allowed, known_models=known)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        return [f"not a policy document ({type(error).__name__}: {error}): every rule needs a `priority` and a `name`"]


LIST_MATCHES = ("requested_models", "task_types", "user_tiers", "team_slugs", "keywords")


def _document_list_errors(document: dict) -> list[str]:
    """Lists given as anything else (a bare string would match its letters)."""
    errors = []
    for rule in document.get("rules") or []:
        lists = {key: (rule.get("match") or {}).get(key, []) for key in LIST_MATCHES}
        lists["fallback_models"] = (rule.get("outcome") or {}).get("fallback_models", [])
        for key, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                errors.append(f"rule '{rule.get('name')}': {key} must be a list of strings")
    return errors


def _routing_policy_publish_document(
    *, policy: RoutingPolicy, document: dict, actor, action: RoutingPolicyAuditAction, note: str = ""
) -> RoutingPolicyVersion:
    errors = routing_policy_document_errors(tenant=policy.tenant, document=document)
    if errors:
        raise ValidationError(errors)
    previous = policy.live_version
    number = (policy.versions.aggregate(highest=Max("number"))["highest"] or 0) + 1
    version = RoutingPolicyVersion.objects.create(
        policy=policy, tenant=policy.tenant, number=number, document=normalized_document(document), published_by=actor
    )
    policy.live_version = version
    policy.save(update_fields=["live_version", "updated_at"])
    RoutingPolicyAudit.objects.create(
        policy=policy,
        tenant=policy.tenant,
        action=action,
        actor=actor,
        previous_version=previous,
        version=version,
        diff=document_diff(previous.document if previous else None, version.document),
        note=note[:300],
    )
    return version


@transaction.atomic
def routing_policy_publish(*, policy: RoutingPolicy, actor) -> RoutingPolicyVersion:
    """Publish the draft as a new live version; refused with every reason (each naming its rule) if it is invalid."""
    policy = (
        RoutingPolicy.objects.for_tenant(policy.tenant_id)
        .select_for_update(of=("self",))
        .select_related("tenant", "live_version")
        .get(pk=policy.pk)
    )
    return _routing_policy_publish_document(
        policy=policy,
        document=policy_draft_document(policy=policy),
        actor=actor,
        action=RoutingPolicyAuditAction.PUBLISH,
    )


@transaction.atomic
def routing_policy_rollback(*, policy: RoutingPolicy, version: RoutingPolicyVersion, actor) -> RoutingPolicyVersion:
    """Publish an earlier version's document again as a new version, and reset the draft to it."""
    policy = (
        RoutingPolicy.objects.for_tenant(policy.tenant_id)
        .select_for_update(of=("self",))
        .select_related("tenant", "live_version")
        .get(pk=policy.pk)
    )
    if version.policy_id != policy.pk:
        raise ValidationError("that version belongs to another policy")
    new_version = _routing_policy_publish_document(
        policy=policy, document=version.document, actor=actor, action=RoutingPolicyAuditAction.ROLLBACK
    )
    policy_draft_replace(policy=policy, document=version.document)
    return new_version


@dataclass(frozen=True, slots=True)
class QualityActionResult:
    version: RoutingPolicyVersion | None  # None: nothing was published
    changes: list[str]
    not_done: list[str]  # the rules it left as they were, and why
    # The draft had edits of its own, so the change was not made there: publishing it as it stands undoes the action.
    draft_left: bool = False


DRAFT_LEFT_NOTE = "The draft had unpublished edits and was left as it was: publishing it as it stands undoes this."


@transaction.atomic
def routing_policy_quality_action(
    *, tenant: Tenant, transform: QualityTransform, rule: str, note: str
) -> QualityActionResult:
    """Publish the live version changed by `transform` (routing.policy.quality_actions) for `rule` ("" for every
    rule), as the system (no actor) with `note` saying why. The draft becomes the new version when it said what the
    live version said; a draft with edits of its own is left alone (an admin may have it open, and their edits are
    theirs to publish) and the note says so. Publishes nothing when nothing needed changing (or could be); raises
    ValidationError when the changed document could not be published."""
    policy = (
        RoutingPolicy.objects.for_tenant(tenant)
        .select_for_update(of=("self",))
        .select_related("tenant", "live_version")
        .first()
    )
    if policy is None or policy.live_version is None:
        return QualityActionResult(None, [], ["the tenant has no live routing policy"])
    live = transform(policy.live_version.document, rule)
    if not live.changes:
        return QualityActionResult(None, [], live.not_done)
    draft_left = policy_draft_document(policy=policy) != normalized_document(policy.live_version.document)
    version = _routing_policy_publish_document(
        policy=policy,
        document=live.document,
        actor=None,
        action=RoutingPolicyAuditAction.PUBLISH,
        note=f"{note}. {DRAFT_LEFT_NOTE}" if draft_left else note,
    )
    if not draft_left:
        policy_draft_replace(policy=policy, document=live.document)
    return QualityActionResult(version, live.changes, live.not_done, draft_left)


# Over this the default template refuses rather than compresses: cut to the cap, the prompt would keep less than an
# eighth of itself, too little to answer well; and one whose length alone proves it over this is refused before it is
# counted (docs/performance.md, fairness between tenants).
DEFAULT_COMPRESSION_CEILING = 32_000
# The default template's rule names, which the demo's synthetic history records as routes too.
TOO_LONG_TO_COMPRESS_RULE = "too-long-to-compress"
SHORT_TASKS_RULE = "short-classification-and-summaries"
ENTERPRISE_RULE = "enterprise-tier"
BY_DIFFICULTY_RULE = "otherwise-by-difficulty"
SHORT_TASK_PROMPT_TOKENS_MAX = 1199


def default_policy_document(*, small_model: str, large_model: str, cache_ttl_seconds: int | None = None) -> dict:
    """The template every tenant starts from: short classification and summaries to the small model, enterprise users
    to the large one, any other `auto` request to the alias's small or large model by its difficulty score; prompts
    over 4,000 tokens compressed to fit, and refused only over 32,000. With `cache_ttl_seconds`, deterministic answers
    are cached that long."""
    cap = {
        "prompt_token_cap": DEFAULT_PROMPT_TOKEN_CAP,
        "over_cap_action": "compress",
        "cache_ttl_seconds": cache_ttl_seconds,
    }
    # With one model there is nothing to fall back to.
    large_falls_back = [small_model] if small_model != large_model else []
    return normalized_document(
        {
            "aliases": {AUTO_ALIAS: {"small": small_model, "large": large_model}},
            "rules": [
                {
                    "priority": 5,
                    "name": TOO_LONG_TO_COMPRESS_RULE,
                    "match": {"prompt_tokens_min": DEFAULT_COMPRESSION_CEILING + 1},
                    "outcome": {"prompt_token_cap": DEFAULT_COMPRESSION_CEILING, "over_cap_action": "reject"},
                },
                {
                    "priority": 10,
                    "name": SHORT_TASKS_RULE,
                    "match": {
                        "requested_models": [AUTO_ALIAS],
                        "task_types": ["classification", "summarization"],
                        "prompt_tokens_max": SHORT_TASK_PROMPT_TOKENS_MAX,
                    },
                    "outcome": {"target_model": small_model, **cap},
                },
                {
                    "priority": 20,
                    "name": ENTERPRISE_RULE,
                    "match": {"requested_models": [AUTO_ALIAS], "user_tiers": ["enterprise"]},
                    "outcome": {"target_model": large_model, "fallback_models": large_falls_back, **cap},
                },
                # No target: the alias's difficulty score picks small or large (the engine's fall-through).
                {
                    "priority": 30,
                    "name": BY_DIFFICULTY_RULE,
                    "match": {"requested_models": [AUTO_ALIAS]},
                    "outcome": {"fallback_models": large_falls_back, **cap},
                },
                # Requests naming a model keep it, under the same prompt cap.
                {"priority": 100, "name": "prompt-cap", "outcome": cap},
            ],
        }
    )


@transaction.atomic
def routing_policy_create_default(
    *, tenant: Tenant, small_model: Model, large_model: Model, actor=None, cache_ttl_seconds: int | None = None
) -> RoutingPolicy:
    """Create the tenant's policy from the default template and publish it."""
    policy = routing_policy_create(tenant=tenant)
    policy_draft_replace(
        policy=policy,
        document=default_policy_document(
            small_model=small_model.name, large_model=large_model.name, cache_ttl_seconds=cache_ttl_seconds
        ),
    )
    routing_policy_publish(policy=policy, actor=actor)
    policy.refresh_from_db()
    return policy


def routing_policy_ensure_default(*, tenant: Tenant, actor=None) -> RoutingPolicy | None:
    """Give a tenant without a policy the default one, its cheapest allowed chat model as small and dearest as large.

    Returns None when the tenant already has a policy or may use no chat model yet.
    """
    if RoutingPolicy.objects.for_tenant(tenant).exists():
        return None
    models = sorted(
        Model.objects.filter(allowed_for__tenant=tenant, is_active=True, kind=ModelKind.CHAT)
        .with_prices_in_force()
        .filter(price_version_id__isnull=False),
        key=lambda model: (model.input_price_per_million + model.output_price_per_million, model.name),
    )
    if not models:
        return None
    return routing_policy_create_default(tenant=tenant, small_model=models[0], large_model=models[-1], actor=actor)
