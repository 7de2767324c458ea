"""Budget tasks: ids in, one service each."""

from celery import shared_task

from billing.budgets.services import budget_counters_check as budget_counters_compare


# The name predates this module; a message beat sent under it before a deploy still runs.
@shared_task(name="billing.tasks.budget_counters_check")
def budget_counters_check() -> int:
    """Nightly from beat: logs each budget whose counter disagrees with the ledger; returns how many."""
    return len(budget_counters_compare())
