"""billing 0024: deliveries pending before the sweep judged them by their due time are due when it judged them until
then, so it neither queues a retrying one beside its retry nor leaves a lost one pending."""

from datetime import timedelta

from django.utils import timezone

from billing.alerts.tasks import alert_deliveries_requeue
from tests.conftest import hourly_spikes
from tests.factories import TenantFactory

BEFORE = [("billing", "0023_usage_kind_cache_embedding")]


def test_pending_deliveries_are_due_when_the_sweep_used_to_judge_them(migrated, mailoutbox):
    tenant = TenantFactory(slug="acme")
    old = migrated(BEFORE)
    Channel, Anomaly, Delivery = (
        old.get_model("billing", name) for name in ("AlertChannel", "Anomaly", "AlertDelivery")
    )
    channel = Channel.objects.create(tenant_id=tenant.pk, name="mail", kind="email", target="ops@acme.test")
    anomalies = hourly_spikes(Anomaly, tenant_id=tenant.pk, count=3)
    lost, retrying, _ = Delivery.objects.bulk_create(
        [
            Delivery(anomaly=anomalies[0], channel=channel),
            Delivery(anomaly=anomalies[1], channel=channel, attempts=3, last_error="554"),
            Delivery(anomaly=anomalies[2], channel=channel, status="sent", attempts=1),
        ]
    )
    made = timezone.now() - timedelta(minutes=10)
    Delivery.objects.update(created_at=made)

    new = migrated()

    due = dict(new.get_model("billing", "AlertDelivery").objects.values_list("pk", "next_attempt_at"))
    assert due[lost.pk] == made
    assert due[retrying.pk] == made + timedelta(hours=2, minutes=33, seconds=30)  # when its retries would have ended
    assert alert_deliveries_requeue() == 1
    assert len(mailoutbox) == 1
