"""Alert tasks: ids in, one service each. The services create the delivery rows; these tasks, the admin's retry and
`manage.py anomalies_detect` queue their sending, so no service imports a task module.

Both alert tasks are acknowledged when they end (acks_late), so a worker that dies running one leaves its message to
another; running one twice sends nothing twice: the BudgetAlert row makes raising exactly-once, and a delivery is
sent under its row lock, skipped once sent or failed, with the same webhook-id on every attempt.
"""

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from celery import shared_task
from django.db import DatabaseError, transaction
from django.utils import timezone

from billing.alerts.anomalies import tenant_anomalies_detect
from billing.alerts.channels import ChannelSendError
from billing.alerts.services import (
    alert_deliveries_due,
    alert_delivery_attempt,
    alert_delivery_give_up,
    budget_alert_raise,
    deliveries_for_workers,
)
from billing.models import AlertDelivery, DeliveryStatus
from core.task_retries import retry_or_run_now
from tenants.models import Tenant
from tenants.selectors import tenants_active

logger = logging.getLogger(__name__)

ALERT_DELIVERY_MAX_RETRIES = 8
# Raising an alert fails only with the database; past its retries the nightly budget check raises what is missing.
ALERT_RAISE_MAX_RETRIES = 8
ALERT_RETRY_BASE_SECONDS = 30
ALERT_RETRY_MAX_SECONDS = 3600


def alert_retry_countdown(retries: int) -> int:
    """30 s, 1 min, 2 min, … up to an hour: about 2 hours of trying in all."""
    return min(ALERT_RETRY_BASE_SECONDS * 2**retries, ALERT_RETRY_MAX_SECONDS)


# A delivery still pending this long after its send was due (next_attempt_at) lost that send's task: the broker away
# when it was queued, a worker gone mid-attempt, a retry's message lost. Longer than a send may run (time_limit).
ALERT_DELIVERY_STUCK_AFTER = timedelta(minutes=2)
ALERT_DELIVERIES_REQUEUE_MAX = 500


def alert_deliveries_send(deliveries: Iterable[AlertDelivery]) -> None:
    """Queue each delivery's sending once the transaction that wrote it commits, so the task finds its row. Each is due
    now: made just now (next_attempt_at's default), or made pending again by alert_delivery_reopen."""
    for delivery in deliveries:
        transaction.on_commit(lambda delivery_id=delivery.pk: alert_delivery_send.delay(delivery_id))


# The name predates this module; tasks already queued under it still run.
@shared_task(
    name="billing.tasks.budget_threshold_alert",
    bind=True,
    max_retries=ALERT_RAISE_MAX_RETRIES,
    acks_late=True,
    reject_on_worker_lost=True,
)
def budget_threshold_alert(
    self, budget_id: int, period_key: str, threshold: int, spent_units: int, customer: str = "", refused: bool = False
) -> None:
    try:
        deliveries = budget_alert_raise(
            budget_id=budget_id,
            period_key=period_key,
            threshold=threshold,
            spent_units=spent_units,
            customer=customer,
            refused=refused,
        )
    except DatabaseError as exc:
        # A gateway process queues each crossing once: this task is the alert's only way in until the nightly check.
        return retry_or_run_now(self, exc, countdown=alert_retry_countdown(self.request.retries))
    alert_deliveries_send(deliveries)


# The name predates this module; tasks already queued under it still run.
# A send's own bounds (a webhook's 15 s, an email's EMAIL_TIMEOUT a step) end it well inside the time limits, which
# the prefork pool enforces: a send stuck past them frees its worker for every other tenant's alerts.
@shared_task(
    name="billing.tasks.alert_delivery_send",
    bind=True,
    max_retries=ALERT_DELIVERY_MAX_RETRIES,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=60,
    time_limit=90,
)
def alert_delivery_send(self, delivery_id: int) -> None:
    try:
        alert_delivery_attempt(delivery_id=delivery_id)
    except ChannelSendError as exc:
        if self.request.retries >= self.max_retries:
            alert_delivery_give_up(delivery_id=delivery_id)
            return
        _retry_later(self, delivery_id, exc)
    except DatabaseError as exc:
        # No attempt recorded: the delivery stays pending, and the sweep queues it again should the retries run out.
        _retry_later(self, delivery_id, exc)


def _retry_later(task, delivery_id: int, exc: Exception) -> None:
    """Retry after the backoff, the delivery due then: until that time is past, the sweep leaves it to this retry."""
    countdown = alert_retry_countdown(task.request.retries)
    try:
        alert_deliveries_due(delivery_ids=[delivery_id], at=timezone.now() + timedelta(seconds=countdown))
    except DatabaseError:
        # The database that failed the attempt may refuse this too: the sweep may then queue the delivery beside the
        # retry, and the second send finds it sent (row lock), or sends it before the retry does.
        logger.warning("alert delivery %s: due time of its retry not recorded", delivery_id, exc_info=True)
    retry_or_run_now(task, exc, countdown=countdown)


@shared_task
def alert_deliveries_requeue() -> int:
    """Every 5 minutes from beat: queue again the deliveries whose send is overdue, its task lost, longest overdue
    first, at most ALERT_DELIVERIES_REQUEUE_MAX a run (the next run takes the rest). Returns how many were queued.
    One waiting for a retry is due when the retry is, so it is left to its retry."""
    now = timezone.now()
    # Unscoped, reviewed (deliveries_for_workers): every tenant's deliveries, each sent to its own channel.
    stuck = list(
        deliveries_for_workers()
        .filter(status=DeliveryStatus.PENDING, next_attempt_at__lt=now - ALERT_DELIVERY_STUCK_AFTER)
        .order_by("next_attempt_at")
        .values_list("pk", "attempts")[:ALERT_DELIVERIES_REQUEUE_MAX]
    )
    alert_deliveries_due(delivery_ids=[delivery_id for delivery_id, _ in stuck], at=now)
    for delivery_id, attempts in stuck:
        # Its retries go on from where the lost one left them (an attempt a retry), not from the start.
        alert_delivery_send.apply_async((delivery_id,), retries=min(attempts, ALERT_DELIVERY_MAX_RETRIES))
    return len(stuck)


# The name predates this module; a message beat sent under it before a deploy still runs.
@shared_task(name="billing.tasks.anomalies_detect")
def anomalies_detect() -> None:
    """Hourly from beat: one task per active tenant, all judging the same last full hour."""
    now = timezone.now().isoformat()
    for tenant_id in tenants_active().values_list("pk", flat=True):
        anomalies_detect_tenant.delay(tenant_id, now)


# The name predates this module; tasks already queued under it still run.
@shared_task(name="billing.tasks.anomalies_detect_tenant")
def anomalies_detect_tenant(tenant_id: int, now: str) -> None:
    tenant = Tenant.objects.for_tenant(tenant_id).first()
    if tenant is not None:
        tenant_anomalies_detect(tenant=tenant, now=datetime.fromisoformat(now), deliveries_send=alert_deliveries_send)
