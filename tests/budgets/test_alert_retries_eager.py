"""Alert deliveries when Celery runs eagerly (no broker: the embedded default). A retry cannot wait in a queue there,
and Celery's Retry would propagate into whatever queued the delivery (a request's thread, the anomaly run): the next
attempts are made at once, and the delivery ends failed after the last, as a worker's would."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.alerts.services import alert_channel_create, anomaly_alert_raise
from billing.alerts.tasks import ALERT_DELIVERY_MAX_RETRIES, alert_deliveries_send
from billing.models import AlertDelivery, Anomaly, AnomalyDirection, AnomalyMetric, AnomalyWindow, DeliveryStatus


@pytest.fixture
def eager():
    """Celery as llmops/settings.py configures it without a broker: tasks run in the caller, errors propagate."""
    from llmops.celery import app

    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


def test_a_failing_delivery_is_retried_at_once_then_failed_without_raising(
    org, eager, django_capture_on_commit_callbacks
):
    # .invalid never resolves: every attempt fails at once, without a network.
    alert_channel_create(
        tenant=org.tenant, name="hook", kind="webhook", target="https://oncall.invalid/hook", signing_secret="s" * 32
    )
    anomaly = Anomaly.objects.create(
        tenant=org.tenant,
        metric=AnomalyMetric.SPEND,
        window=AnomalyWindow.HOUR,
        window_end=datetime(2026, 11, 27, 12, tzinfo=UTC),
        observed=Decimal(2),
        baseline_median=Decimal("0.02"),
        baseline_mad=Decimal("0.002"),
        score=Decimal(9),
        direction=AnomalyDirection.SPIKE,
    )

    with django_capture_on_commit_callbacks(execute=True):
        alert_deliveries_send(anomaly_alert_raise(anomaly=anomaly))

    delivery = AlertDelivery.objects.for_tenant(org.tenant).get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, ALERT_DELIVERY_MAX_RETRIES + 1)
