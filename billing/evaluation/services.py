"""A tenant's shadow-evaluation settings, as the admin saves them: set and checked here."""

from decimal import Decimal

from django.core.exceptions import ValidationError

from billing.models import EvaluationSettings
from routing.models import Model, ModelKind
from tenants.models import Tenant

JUDGE_MODEL_REFUSED = "The judge must be a chat model this tenant may use."


def judge_model_usable(*, tenant_id: int, model: Model) -> bool:
    """A judge must be an active chat model the tenant may use."""
    return Model.objects.filter(
        pk=model.pk, allowed_for__tenant_id=tenant_id, is_active=True, kind=ModelKind.CHAT
    ).exists()


def evaluation_settings_validate(settings: EvaluationSettings) -> None:
    settings.full_clean()
    if settings.judge_model is not None and not judge_model_usable(
        tenant_id=settings.tenant_id, model=settings.judge_model
    ):
        raise ValidationError({"judge_model": JUDGE_MODEL_REFUSED})


def evaluation_settings_set(
    *,
    tenant: Tenant,
    enabled: bool,
    monthly_budget_usd: Decimal,
    routing_sample_rate: Decimal | None = None,
    semantic_cache_sample_rate: Decimal | None = None,
    compression_sample_rate: Decimal | None = None,
    budget_downgrade_sample_rate: Decimal | None = None,
    judge_model: Model | None = None,
    exact_task_types: str | None = None,
    similarity_threshold: Decimal | None = None,
) -> EvaluationSettings:
    """Create or change the tenant's settings; a value left None keeps what is set (the default, for new settings)."""
    settings = EvaluationSettings.objects.for_tenant(tenant).first() or EvaluationSettings(tenant=tenant)
    settings.enabled, settings.monthly_budget_usd, settings.judge_model = enabled, monthly_budget_usd, judge_model
    optional = {
        "routing_sample_rate": routing_sample_rate,
        "semantic_cache_sample_rate": semantic_cache_sample_rate,
        "compression_sample_rate": compression_sample_rate,
        "budget_downgrade_sample_rate": budget_downgrade_sample_rate,
        "exact_task_types": exact_task_types,
        "similarity_threshold": similarity_threshold,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(settings, name, value)
    # Sampling paused for a spent month starts again (with a raised budget, say); the worker pauses it again if not.
    settings.exhausted_until = None
    evaluation_settings_validate(settings)
    settings.save()
    return settings
