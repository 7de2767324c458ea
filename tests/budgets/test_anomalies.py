import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest.mock import patch

import pytest
from django.db import DatabaseError

from billing.alerts.anomalies import tenant_anomalies_detect
from billing.alerts.services import alert_channel_create, anomaly_alert_raise
from billing.alerts.tasks import alert_deliveries_send, anomalies_detect_tenant
from billing.models import (
    AlertDelivery,
    Anomaly,
    AnomalyDirection,
    AnomalyMetric,
    AnomalyWindow,
    UsageKind,
    UsageRecord,
)

NOW = datetime(2026, 11, 27, 12, 10, tzinfo=UTC)
WINDOW_END = datetime(2026, 11, 27, 12, tzinfo=UTC)
REQUESTS_PER_HOUR = 6


@pytest.fixture(autouse=True)
def small_volume(settings):
    settings.LLMOPS_ANOMALY_MIN_REQUESTS = 5
    settings.LLMOPS_ANOMALY_MIN_SCORE = 5.0


def ledger_rows(org, *, hours: int, cost_scale: Decimal = Decimal(1), seed: int = 7, error_every: int = 0):
    """Fifteen days of ordinary traffic: busier by day, each request's cost and size varying by up to ±20%."""
    rng = random.Random(seed)
    rows = []
    for hour_back in range(1, hours + 1):
        hour = WINDOW_END - timedelta(hours=hour_back)
        daytime = 2 if 8 <= hour.hour < 20 else 1
        for number in range(REQUESTS_PER_HOUR * daytime):
            variation = Decimal(rng.randint(80, 120)) / 100
            rows.append(
                UsageRecord(
                    request_id=f"r-{hour_back}-{number}-{seed}",
                    tenant=org.tenant,
                    team=org.team,
                    api_key=org.api_key,
                    served_model="m",
                    prompt_tokens=int(500 * variation),
                    completion_tokens=int(200 * variation),
                    cost_usd=(Decimal("0.002") * variation * cost_scale).quantize(Decimal("0.0000000001")),
                    http_status=500 if error_every and number % error_every == 0 else 200,
                    created_at=hour + timedelta(minutes=number),
                )
            )
    UsageRecord.objects.bulk_create(rows)


def spike_rows(org, *, count: int, cost: str, kind: str = UsageKind.REQUEST):
    UsageRecord.objects.bulk_create(
        UsageRecord(
            request_id=f"spike-{number}",
            kind=kind,
            tenant=org.tenant,
            team=org.team,
            api_key=org.api_key,
            served_model="m",
            prompt_tokens=500,
            completion_tokens=200,
            cost_usd=Decimal(cost),
            http_status=200,
            created_at=WINDOW_END - timedelta(minutes=30) + timedelta(seconds=number),
        )
        for number in range(count)
    )


def test_normal_variation_is_not_flagged(org):
    ledger_rows(org, hours=15 * 24)
    assert tenant_anomalies_detect(tenant=org.tenant, now=NOW, deliveries_send=alert_deliveries_send) == []


def test_shadow_evaluation_calls_are_no_spend_spike(org):
    ledger_rows(org, hours=15 * 24)
    spike_rows(org, count=40, cost="0.05", kind=UsageKind.EVALUATION)  # the spike below, as evaluation calls

    assert tenant_anomalies_detect(tenant=org.tenant, now=NOW, deliveries_send=alert_deliveries_send) == []


def test_an_injected_spend_spike_is_flagged_with_its_numbers_and_alerted(
    org, mailoutbox, django_capture_on_commit_callbacks
):
    alert_channel_create(tenant=org.tenant, name="mail", kind="email", target="oncall@example.com")
    ledger_rows(org, hours=15 * 24)
    spike_rows(org, count=40, cost="0.05")  # a runaway loop: $2 in the last half hour, normally ~$0.02 an hour
    with django_capture_on_commit_callbacks(execute=True):
        anomalies_detect_tenant(org.tenant.pk, NOW.isoformat())  # as beat runs it
    anomalies = list(Anomaly.objects.unscoped().filter(tenant=org.tenant))
    spend_spikes = {
        (anomaly.team_id, anomaly.window)
        for anomaly in anomalies
        if anomaly.metric == AnomalyMetric.SPEND and anomaly.direction == AnomalyDirection.SPIKE
    }
    # Flagged for the tenant and its team, in the last hour and the last day.
    assert spend_spikes == {
        (None, AnomalyWindow.HOUR),
        (org.team.pk, AnomalyWindow.HOUR),
        (None, AnomalyWindow.DAY),
        (org.team.pk, AnomalyWindow.DAY),
    }
    hourly = Anomaly.objects.unscoped().get(team=None, metric=AnomalyMetric.SPEND, window=AnomalyWindow.HOUR)
    assert hourly.window_end == WINDOW_END
    assert hourly.observed > Decimal(2)
    assert Decimal("0.02") < hourly.baseline_median < Decimal("0.03")
    assert hourly.score > 5
    assert AlertDelivery.objects.unscoped().filter(anomaly__isnull=False).count() == len(anomalies)
    assert any("spend (usd) spike (hour)" in mail.subject.lower() for mail in mailoutbox)
    # The next run over the same window stores and sends nothing again.
    assert tenant_anomalies_detect(tenant=org.tenant, now=NOW, deliveries_send=alert_deliveries_send) == []
    # An hour later the day window still holds the spike: the same episode, stored again but not alerted again.
    sent = AlertDelivery.objects.unscoped().count()
    with django_capture_on_commit_callbacks(execute=True):
        later = tenant_anomalies_detect(
            tenant=org.tenant, now=NOW + timedelta(hours=1), deliveries_send=alert_deliveries_send
        )
    assert {(anomaly.team_id, anomaly.window) for anomaly in later if anomaly.metric == AnomalyMetric.SPEND} == {
        (None, AnomalyWindow.DAY),
        (org.team.pk, AnomalyWindow.DAY),
    }
    assert AlertDelivery.objects.unscoped().count() == sent


def test_an_error_burst_is_flagged_as_error_rate_spike_and_tokens_per_request_drop(org):
    ledger_rows(org, hours=15 * 24)
    errors = [
        UsageRecord(
            request_id=f"err-{number}",
            tenant=org.tenant,
            team=org.team,
            api_key=org.api_key,
            served_model="m",
            cost_usd=Decimal(0),
            http_status=502,
            created_at=WINDOW_END - timedelta(minutes=59) + timedelta(seconds=number),
        )
        for number in range(30)
    ]
    UsageRecord.objects.bulk_create(errors)
    metrics = {
        (anomaly.metric, anomaly.direction)
        for anomaly in tenant_anomalies_detect(tenant=org.tenant, now=NOW, deliveries_send=alert_deliveries_send)
        if anomaly.team_id is None and anomaly.window == AnomalyWindow.HOUR
    }
    assert (AnomalyMetric.ERROR_RATE, AnomalyDirection.SPIKE) in metrics
    assert (AnomalyMetric.TOKENS_PER_REQUEST, AnomalyDirection.DROP) in metrics


def test_too_little_history_judges_nothing(org):
    ledger_rows(org, hours=3 * 24)
    spike_rows(org, count=40, cost="0.05")
    assert tenant_anomalies_detect(tenant=org.tenant, now=NOW, deliveries_send=alert_deliveries_send) == []


def test_an_anomaly_stored_is_alerted_even_when_a_later_one_fails(org, django_capture_on_commit_callbacks):
    alert_channel_create(tenant=org.tenant, name="mail", kind="email", target="oncall@example.com")
    ledger_rows(org, hours=15 * 24)
    spike_rows(org, count=40, cost="0.05")
    raised = []

    def raise_then_fail(*, anomaly):
        if raised:
            raise DatabaseError("the second anomaly's alert cannot be written")
        raised.append(anomaly)
        return anomaly_alert_raise(anomaly=anomaly)

    with (
        patch("billing.alerts.anomalies.anomaly_alert_raise", raise_then_fail),
        django_capture_on_commit_callbacks() as queued,
        pytest.raises(DatabaseError),
    ):
        tenant_anomalies_detect(tenant=org.tenant, now=NOW, deliveries_send=alert_deliveries_send)

    [stored] = raised
    assert Anomaly.objects.for_tenant(org.tenant).get() == stored
    # The first anomaly's delivery is queued although the run failed after it.
    assert len(queued) == AlertDelivery.objects.for_tenant(org.tenant).filter(anomaly=stored).count() == 1
