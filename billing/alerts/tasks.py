"""Alert tasks: ids in, one service each. The services create the delivery rows; these tasks, the admin's retry and
`manage.py anomalies_detect` queue their sending, so no service imports a task module."""

from collections.abc import Iterable
from datetime import datetime

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from billing.alerts.anomalies import tenant_anomalies_detect
from billing.alerts.channels import ChannelSendError
from billing.alerts.services import alert_delivery_attempt, alert_delivery_give_up, budget_alert_raise
from billing.models import AlertDelivery
from core.task_retries import retry_or_run_now
from tenants.models import Tenant
from tenants.selectors import tenants_active

ALERT_DELIVERY_MAX_RETRIES = 8
ALERT_RETRY_BASE_SECONDS = 30
ALERT_RETRY_MAX_SECONDS = 3600


def alert_retry_countdown(retries: int) -> int:
    """30 s, 1 min, 2 min, … up to an hour: about 5 hours of trying in all."""
    return min(ALERT_RETRY_BASE_SECONDS * 2**retries, ALERT_RETRY_MAX_SECONDS)


def alert_deliveries_send(deliveries: Iterable[AlertDelivery]) -> None:
    """Queue each delivery's sending once the transaction that wrote it commits, so the task finds its row."""
    for delivery in deliveries:
        transaction.on_commit(lambda delivery_id=delivery.pk: alert_delivery_send.delay(delivery_id))


# The name predates this module; tasks already queued under it still run.
@shared_task(name="billing.tasks.budget_threshold_alert")
def budget_threshold_alert(
    budget_id: int, period_key: str, threshold: int, spent_units: int, customer: str = "", refused: bool = False
) -> None:
    alert_deliveries_send(
        budget_alert_raise(
            budget_id=budget_id,
            period_key=period_key,
            threshold=threshold,
            spent_units=spent_units,
            customer=customer,
            refused=refused,
        )
    )


# The name predates this module; tasks already queued under it still run.
@shared_task(name="billing.tasks.alert_delivery_send", bind=True, max_retries=ALERT_DELIVERY_MAX_RETRIES)
def alert_delivery_send(self, delivery_id: int) -> None:
    try:
        alert_delivery_attempt(delivery_id=delivery_id)
    except ChannelSendError as exc:
        if self.request.retries >= self.max_retries:
            alert_delivery_give_up(delivery_id=delivery_id)
            return
        retry_or_run_now(self, exc, countdown=alert_retry_countdown(self.request.retries))


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
