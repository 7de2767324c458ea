from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.budgets.counters import BudgetHold, counter_reserved, ledger_spend
from billing.budgets.index import budget_entry
from billing.budgets.periods import BudgetWindow, budget_window
from billing.models import Budget


def budget_current_window(*, budget: Budget, now: datetime) -> BudgetWindow:
    entry = budget_entry(budget)
    return budget_window(period=entry.period, zone=entry.zone, now=now)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    budget: Budget
    customer: str  # whose period, for a customer-scope budget
    window: BudgetWindow
    spent_usd: Decimal  # settled, from the ledger (its rows and the stream's backlog)
    reserved_usd: Decimal  # worst cases of the requests in flight, from the counter

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.budget.limit_usd - self.spent_usd - self.reserved_usd, Decimal(0))


def budget_status(*, budget: Budget, now: datetime, customer: str = "") -> BudgetStatus:
    """The budget's current period; for a customer-scope budget, that of `customer` (its own, when it names one)."""
    entry = budget_entry(budget)
    hold = BudgetHold.of(entry, now=now, customer=entry.customer or customer)
    return BudgetStatus(
        budget=budget,
        customer=hold.customer,
        window=hold.window,
        spent_usd=ledger_spend(hold=hold),
        reserved_usd=counter_reserved(hold=hold),
    )
