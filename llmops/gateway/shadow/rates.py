"""A tenant's shadow-evaluation sample rates as the request path reads them: in its configuration snapshot
(llmops.gateway.snapshot), so deciding whether to sample costs no query."""

from dataclasses import dataclass
from decimal import Decimal

from billing.models import EvaluationSettings, Lever


@dataclass(frozen=True, slots=True)
class EvaluationRates:
    """The share of requests to sample for each lever, of a tenant that evaluates (enabled, with a budget)."""

    routing: float
    semantic_cache: float
    compression: float
    budget_downgrade: float

    def of(self, lever: Lever) -> float:
        return getattr(self, lever.value)


def build_evaluation_rates(*, tenant_id: int) -> EvaluationRates | None:
    """None, so the request path does nothing, unless the tenant enabled evaluation and gave it a budget."""
    settings = (
        EvaluationSettings.objects.for_tenant(tenant_id).filter(enabled=True, monthly_budget_usd__gt=Decimal(0)).first()
    )
    if settings is None:
        return None
    return EvaluationRates(**{lever.value: float(getattr(settings, f"{lever.value}_sample_rate")) for lever in Lever})
