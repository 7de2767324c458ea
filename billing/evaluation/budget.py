"""A tenant's evaluation budget: what shadow evaluation's calls may cost per calendar month (UTC), kept apart from the
product budgets (billing.budgets), which never count evaluation calls.

Every evaluation call reserves its worst case first, on the tenant's EvaluationSpend row of the month under a row lock:
refused when what is spent, what calls in flight hold and this worst case would pass ``monthly_budget_usd``. The
call is then settled with what it cost, so concurrent evaluations on any number of workers never together commit
more than the budget (a provider that bills more than the worst case its own usage allows aside).
"""

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import F

from billing.models import EvaluationSettings, EvaluationSpend

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvaluationHold:
    """An evaluation call's reservation, settled on the month it was made in."""

    tenant_id: int
    month: date
    amount: Decimal


def evaluation_month(moment: datetime) -> date:
    return moment.astimezone(UTC).date().replace(day=1)


def _locked_spend(tenant_id: int, month: date) -> EvaluationSpend:
    EvaluationSpend.objects.bulk_create([EvaluationSpend(tenant_id=tenant_id, month=month)], ignore_conflicts=True)
    return EvaluationSpend.objects.for_tenant(tenant_id).select_for_update().get(month=month)


@transaction.atomic
def evaluation_budget_reserve(*, tenant_id: int, amount: Decimal, now: datetime) -> EvaluationHold | None:
    """Reserve ``amount`` (a call's worst case) against this month's evaluation budget; None, counted as refused, when
    the budget cannot cover it or the tenant no longer evaluates."""
    month = evaluation_month(now)
    spend = _locked_spend(tenant_id, month)
    budget = (
        EvaluationSettings.objects.for_tenant(tenant_id)
        .filter(enabled=True)
        .values_list("monthly_budget_usd", flat=True)
        .first()
    )
    if budget is None or spend.spent_usd + spend.reserved_usd + amount > budget:
        spend.refused += 1
        spend.save(update_fields=["refused"])
        logger.info(
            "shadow evaluation of tenant %s refused: its evaluation budget cannot cover %s USD", tenant_id, amount
        )
        return None
    spend.reserved_usd += amount
    spend.save(update_fields=["reserved_usd"])
    return EvaluationHold(tenant_id=tenant_id, month=month, amount=amount)


@transaction.atomic
def evaluation_budget_settle(*, hold: EvaluationHold, actual: Decimal) -> None:
    """Replace the hold's reservation with what the call cost."""
    spend = _locked_spend(hold.tenant_id, hold.month)
    spend.reserved_usd = max(spend.reserved_usd - hold.amount, Decimal(0))
    spend.spent_usd += actual
    spend.save(update_fields=["reserved_usd", "spent_usd"])


def evaluation_unjudged_count(*, tenant_id: int, now: datetime) -> None:
    """Count an evaluation that ended without a verdict in the month's figures."""
    month = evaluation_month(now)
    EvaluationSpend.objects.bulk_create([EvaluationSpend(tenant_id=tenant_id, month=month)], ignore_conflicts=True)
    EvaluationSpend.objects.for_tenant(tenant_id).filter(month=month).update(unjudged=F("unjudged") + 1)
