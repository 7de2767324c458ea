"""Threshold crossings noticed on the request path, handed to Celery without blocking the event loop.

The request path only notices; billing.alerts.tasks.budget_threshold_alert inserts the BudgetAlert row whose
unique constraint makes the alert exactly-once across replicas and retries. The in-process set below
only spares the broker a task per refused request: a crossing whose task fails for good is not queued by this process
again, and the nightly budget check (billing.budgets.services.budget_counters_check) raises it then.

Settled spend on a block or downgrade budget stops below the limit (a request is refused once its worst case would
pass it), so the first request of a period that its spend refuses raises the budget's top threshold; the lower ones
are left to spend.
"""

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

from django.db import connections

from billing.alerts.tasks import budget_threshold_alert
from billing.budgets.index import BudgetEntry

logger = logging.getLogger(__name__)

MAX_REMEMBERED_CROSSINGS = 10_000

# One thread, so a process hands its crossings to Celery in the order it noticed them (50 % before 80 %).
_enqueue_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="budget-alerts")
_enqueued: set[tuple[int, str, int]] = set()
_pending: set[Future] = set()
_lock = threading.Lock()

# entry, period key, threshold %, spent units, customer ("" but for customer scope, where the first customer to cross
# a threshold raises its budget's alert for the period)
Crossing = tuple[BudgetEntry, str, int, int, str]


def crossed_thresholds(*, entry: BudgetEntry, spent_before: int, spent_after: int) -> list[int]:
    """Thresholds (percent of the limit) that spend passed on its way from `spent_before` to `spent_after`."""
    limit = entry.limit_units
    return [threshold for threshold in entry.thresholds if spent_before * 100 < threshold * limit <= spent_after * 100]


def threshold_alerts_enqueue(*, crossings: list[Crossing], refused: bool = False) -> None:
    """`refused`: raised by a request the budget refused, not by spend that reached the thresholds."""
    fresh = []
    with _lock:
        if len(_enqueued) > MAX_REMEMBERED_CROSSINGS:
            _enqueued.clear()
        for entry, period_key, threshold, spent_units, customer in crossings:
            if (entry.budget_id, period_key, threshold) not in _enqueued:
                _enqueued.add((entry.budget_id, period_key, threshold))
                fresh.append((entry.budget_id, period_key, threshold, spent_units, customer, refused))
    if fresh:
        future = _enqueue_executor.submit(_send_tasks, fresh)
        _pending.add(future)
        future.add_done_callback(_pending.discard)


def refusal_alert_enqueue(*, entry: BudgetEntry, period_key: str, spent_units: int, customer: str = "") -> None:
    """A block or downgrade budget's spend refused a request: raise its top threshold, once a period."""
    if entry.thresholds:
        threshold_alerts_enqueue(
            crossings=[(entry, period_key, entry.thresholds[-1], spent_units, customer)], refused=True
        )


def threshold_alert_raise_again(
    *, entry: BudgetEntry, period_key: str, threshold: int, spent_units: int, customer: str
) -> None:
    """Queue a threshold's alert from the caller, whether or not this process queued it before: for the nightly check,
    which finds the alerts spend reached but no task raised. The BudgetAlert row keeps it to one alert."""
    budget_threshold_alert.delay(entry.budget_id, period_key, threshold, spent_units, customer)


def threshold_alerts_wait(timeout: float = 10.0) -> None:
    """Wait for enqueues in flight, e.g. before a worker process exits."""
    wait(list(_pending), timeout=timeout)


def _send_tasks(crossings: list[tuple[int, str, int, int, str, bool]]) -> None:
    try:
        for budget_id, period_key, threshold, spent_units, customer, refused in crossings:
            # `refused` only when set: a worker still on the code before it takes every other alert.
            extra = {"refused": True} if refused else {}
            budget_threshold_alert.delay(budget_id, period_key, threshold, spent_units, customer, **extra)
    except Exception:
        logger.exception("could not enqueue budget threshold alerts %s", crossings)
        with _lock:
            _enqueued.difference_update((b, p, t) for b, p, t, *_ in crossings)
    finally:
        # A thread seldom used: hold no database connection between crossings.
        connections.close_all()
