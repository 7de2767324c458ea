"""billing 0021: audit events and delivery errors written before a Slack channel's webhook URL was masked in them
(every member of the tenant reads both) get it masked where they are, as rows written since are."""

from functools import partial

from billing.alerts.channels import without_credential
from billing.models import AlertChannel, ChannelKind
from tenants.audit import mask_secret
from tests.conftest import hourly_spikes
from tests.factories import TenantFactory

BEFORE = [("billing", "0020_budgetalert_refused")]
URL_NOW = "https://hooks.slack.com/services/T0ACME/B0NOW/n0wT0k3n"
URL_BEFORE = "https://hooks.slack.com/services/T0ACME/B0OLD/0ldT0k3n"
URL_GONE = "https://hooks.slack.com/services/T0ACME/B0GONE/g0neT0k3n"
MASKED = "https://hooks.slack.com/[API_KEY]"


def channel_event(AuditEvent, tenant_id: int, channel_id: int, action: str, before=None, after=None):
    return AuditEvent(
        tenant_id=tenant_id,
        tenant_slug="acme",
        actor_name="system",
        action=action,
        object_type="billing.alertchannel",
        object_id=str(channel_id),
        object_repr=f"channel {channel_id}",
        before=before,
        after=after,
    )


def test_slack_urls_in_old_audit_events_and_delivery_errors_are_masked_as_new_ones_are(migrated):
    tenant = TenantFactory(slug="acme")
    old = migrated(BEFORE)
    Channel, Anomaly, Delivery, AuditEvent = (
        old.get_model("billing", "AlertChannel"),
        old.get_model("billing", "Anomaly"),
        old.get_model("billing", "AlertDelivery"),
        old.get_model("tenants", "AuditEvent"),
    )
    # Without signals, as the rows below stand for what the code of before wrote about them.
    slack, email = Channel.objects.bulk_create(
        [
            Channel(tenant_id=tenant.pk, name="slack", kind=ChannelKind.SLACK, target=URL_NOW),
            Channel(tenant_id=tenant.pk, name="mail", kind=ChannelKind.EMAIL, target="ops@acme.test"),
        ]
    )
    gone_id = email.pk + 1
    already_masked = {"target": mask_secret(URL_BEFORE)}, {"target": mask_secret(URL_NOW)}
    event = partial(channel_event, AuditEvent, tenant.pk)
    events = AuditEvent.objects.bulk_create(
        [
            event(slack.pk, "create", after={"kind": "slack", "target": URL_BEFORE}),
            # An update keeps only the fields that changed: the kind is not in it.
            event(slack.pk, "update", {"target": URL_BEFORE}, {"target": URL_NOW}),
            event(email.pk, "create", after={"kind": "email", "target": "ops@acme.test"}),
            # A channel deleted since: only its events say it was a Slack one.
            event(gone_id, "create", after={"kind": "slack", "target": URL_GONE}),
            event(gone_id, "update", {"target": URL_GONE}, {"name": "renamed"}),
            event(gone_id, "delete", {"kind": "slack", "target": URL_GONE}),
            # Written by the code that masks already.
            event(slack.pk, "update", *already_masked),
        ]
    )
    anomalies = hourly_spikes(Anomaly, tenant_id=tenant.pk, count=2)
    errors = {
        "now": f"POST {URL_NOW} answered 500: boom",
        "before": f"POST {URL_BEFORE} failed: ConnectError('refused')",
        "mail": "email to ops@acme.test failed: 554",
    }
    deliveries = Delivery.objects.bulk_create(
        [
            Delivery(anomaly=anomalies[0], channel=slack, status="failed", last_error=errors["now"]),
            Delivery(anomaly=anomalies[1], channel=slack, status="failed", last_error=errors["before"]),
            Delivery(anomaly=anomalies[0], channel=email, status="failed", last_error=errors["mail"]),
        ]
    )

    new = migrated()

    stored = {event.pk: (event.before, event.after) for event in new.get_model("tenants", "AuditEvent").objects.all()}
    assert stored[events[0].pk] == (None, {"kind": "slack", "target": mask_secret(URL_BEFORE)})
    assert stored[events[1].pk] == ({"target": mask_secret(URL_BEFORE)}, {"target": mask_secret(URL_NOW)})
    assert stored[events[2].pk] == (None, {"kind": "email", "target": "ops@acme.test"})
    assert stored[events[3].pk][1]["target"] == stored[events[5].pk][0]["target"] == mask_secret(URL_GONE)
    assert stored[events[4].pk] == ({"target": mask_secret(URL_GONE)}, {"name": "renamed"})
    assert stored[events[6].pk] == already_masked
    assert "hooks.slack.com" not in str(stored)
    # The channel's current target masked as the senders mask it now, and its earlier one the same way.
    last_errors = dict(new.get_model("billing", "AlertDelivery").objects.values_list("pk", "last_error"))
    as_senders_mask = without_credential(AlertChannel(kind=ChannelKind.SLACK, target=URL_NOW), errors["now"])
    assert last_errors[deliveries[0].pk] == as_senders_mask == f"POST {MASKED} answered 500: boom"
    assert last_errors[deliveries[1].pk] == f"POST {MASKED} failed: ConnectError('refused')"
    assert last_errors[deliveries[2].pk] == errors["mail"]

    # Backwards it changes nothing: the URLs are not kept anywhere to put back.
    migrated(BEFORE)
    assert "hooks.slack.com" not in str(list(old.get_model("tenants", "AuditEvent").objects.values("before", "after")))
    assert not old.get_model("billing", "AlertDelivery").objects.filter(last_error__contains="hooks.slack.com/services")
