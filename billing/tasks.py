"""billing's Celery tasks: ids in, one service each."""

from datetime import datetime

from celery import shared_task
from django.utils import timezone

from billing.alerts.anomalies import tenant_anomalies_detect
from billing.alerts.channels import ChannelSendError
from billing.alerts.services import alert_delivery_attempt, alert_delivery_give_up, budget_alert_raise
from billing.budgets.services import budget_counters_check as budget_counters_compare
from tenants.models import Tenant

ALERT_DELIVERY_MAX_RETRIES = 8
ALERT_RETRY_BASE_SECONDS = 30
ALERT_RETRY_MAX_SECONDS = 3600


def alert_retry_countdown(retries: int) -> int:
    """30 s, 1 min, 2 min, … up to an hour: about 5 hours of trying in all."""
    return min(ALERT_RETRY_BASE_SECONDS * 2**retries, ALERT_RETRY_MAX_SECONDS)


@shared_task
def budget_threshold_alert(budget_id: int, period_key: str, threshold: int, spent_units: int) -> None:
    budget_alert_raise(budget_id=budget_id, period_key=period_key, threshold=threshold, spent_units=spent_units)


@shared_task(bind=True, max_retries=ALERT_DELIVERY_MAX_RETRIES)
def alert_delivery_send(self, delivery_id: int) -> None:
    try:
        alert_delivery_attempt(delivery_id=delivery_id)
    except ChannelSendError as exc:
        if self.request.retries >= self.max_retries:
            alert_delivery_give_up(delivery_id=delivery_id)
            return
        raise self.retry(exc=exc, countdown=alert_retry_countdown(self.request.retries)) from exc


@shared_task
def anomalies_detect() -> None:
    """Hourly from beat: one task per active tenant, all judging the same last full hour."""
    now = timezone.now().isoformat()
    for tenant_id in Tenant.objects.filter(is_active=True).values_list("pk", flat=True):
        anomalies_detect_tenant.delay(tenant_id, now)


@shared_task
def anomalies_detect_tenant(tenant_id: int, now: str) -> None:
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is not None:
        tenant_anomalies_detect(tenant=tenant, now=datetime.fromisoformat(now))


@shared_task
def budget_counters_check() -> int:
    """Nightly from beat: logs each budget whose counter disagrees with the ledger; returns how many."""
    return len(budget_counters_compare())
