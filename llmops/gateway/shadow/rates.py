"""A tenant's shadow-evaluation sample rates as the request path reads them: in its configuration snapshot
(llmops.gateway.snapshot), so deciding whether to sample costs no query."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing.models import EvaluationSettings, Lever


@dataclass(frozen=True, slots=True)
class EvaluationRates:
    """The share of requests to sample for each lever, of a tenant that evaluates (enabled, with a budget)."""

    routing: float
    semantic_cache: float
    compression: float
    budget_downgrade: float
    # Nothing is sampled before then: the month's evaluation budget is spent (EvaluationSettings.exhausted_until).
    paused_until: datetime | None = None

    def of(self, lever: Lever) -> float:
        return getattr(self, lever.value)

    def paused(self) -> bool:
        # The clock is read only while a pause is set: a snapshot loaded during one resumes on its own when it ends.
        return self.paused_until is not None and timezone.now() < self.paused_until


def build_evaluation_rates(*, tenant_id: int) -> EvaluationRates | None:
    """None, so the request path does nothing, unless the tenant enabled evaluation and gave it a budget."""
    settings = (
        EvaluationSettings.objects.for_tenant(tenant_id).filter(enabled=True, monthly_budget_usd__gt=Decimal(0)).first()
    )
    if settings is None:
        return None
    rates = {lever.value: float(getattr(settings, f"{lever.value}_sample_rate")) for lever in Lever}
    return EvaluationRates(**rates, paused_until=settings.exhausted_until)
