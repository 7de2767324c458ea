from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import QuerySet, Sum

from billing.budgets.index import budget_entry
from billing.budgets.periods import BudgetWindow, budget_window
from billing.models import Budget, BudgetScope, UsageRecord
from tenants.models import EDITING_ROLES


def budget_current_window(*, budget: Budget, now: datetime) -> BudgetWindow:
    entry = budget_entry(budget)
    return budget_window(period=entry.period, zone=entry.zone, now=now)


def budget_ledger_spend(*, budget: Budget, window: BudgetWindow) -> Decimal:
    """What the ledger says the budget's scope spent in the window: the truth counters are checked against."""
    records = UsageRecord.objects.for_tenant(budget.tenant_id).filter(
        created_at__gte=window.start, created_at__lt=window.end
    )
    if budget.scope == BudgetScope.TEAM:
        records = records.filter(team_id=budget.team_id)
    elif budget.scope == BudgetScope.KEY:
        records = records.filter(api_key_id=budget.api_key_id)
    elif budget.scope == BudgetScope.TENANT_MODEL:
        records = records.filter(served_model=budget.model_name)
    return records.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    budget: Budget
    window: BudgetWindow
    spent_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.budget.limit_usd - self.spent_usd, Decimal(0))


def budget_status(*, budget: Budget, now: datetime) -> BudgetStatus:
    window = budget_current_window(budget=budget, now=now)
    return BudgetStatus(budget=budget, window=window, spent_usd=budget_ledger_spend(budget=budget, window=window))


def budgets_editable_by(*, user) -> QuerySet[Budget]:
    """Budgets of the tenants where the user is an owner or admin (all of them for a superuser)."""
    budgets = Budget.objects.select_related("tenant", "team", "api_key").prefetch_related("channels")
    if user.is_superuser:
        return budgets
    return budgets.filter(tenant__memberships__user=user, tenant__memberships__role__in=EDITING_ROLES)
