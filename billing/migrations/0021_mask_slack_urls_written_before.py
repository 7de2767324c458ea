"""Slack webhook URLs (credentials: CREDENTIAL_TARGET_KINDS) left in rows written before they were masked there: the
audit log's snapshots of Slack alert channels and failed deliveries' errors, which every member of the tenant reads.
They are masked where they are by the functions that mask new rows (tenants.audit.mask_secret,
billing.alerts.channels.without_credential), those of the release this ships with.

Only rows that can hold such a URL are read, a chunk at a time in primary-key order: audit events of alert channels
(object_type is indexed) with a target, and deliveries to a Slack channel with an error. An error quotes the URL the
channel had when it was sent, so the channel's earlier targets that its audit events name are masked in it too. A
value masked already is left as it is, so running it again changes nothing. Backwards it does nothing: the URLs are
kept nowhere to put back.
"""

from collections import defaultdict

from django.db import migrations
from django.db.models import Q

CHUNK = 2000
CHANNEL_EVENTS = "billing.alertchannel"


def _chunks(queryset):
    """The rows in primary-key order, CHUNK at a time; each chunk is read after the previous one was handled."""
    last = 0
    while chunk := list(queryset.filter(pk__gt=last).order_by("pk")[:CHUNK]):
        yield chunk
        last = chunk[-1].pk


def _credential_channel_ids(AlertChannel, events, credential_kinds) -> set[str]:
    """The ids, as audit events name them, of the channels whose target is a credential. A channel's kind never
    changes; a deleted channel's is in its creation and deletion events."""
    kinds = {str(pk): kind for pk, kind in AlertChannel.objects.values_list("pk", "kind")}
    with_kind = events.filter(Q(before__has_key="kind") | Q(after__has_key="kind"))
    for object_id, *event_kinds in with_kind.values_list("object_id", "before__kind", "after__kind").iterator():
        for kind in filter(None, event_kinds):
            kinds.setdefault(object_id, kind)
    return {object_id for object_id, kind in kinds.items() if kind in credential_kinds}


def mask_slack_urls(apps, schema_editor):
    from billing.alerts.channels import without_credential
    from billing.models import CREDENTIAL_TARGET_KINDS
    from tenants.audit import is_masked_secret, mask_secret

    AlertChannel = apps.get_model("billing", "AlertChannel")
    AlertDelivery = apps.get_model("billing", "AlertDelivery")
    AuditEvent = apps.get_model("tenants", "AuditEvent")

    channel_events = AuditEvent.objects.filter(object_type=CHANNEL_EVENTS)
    credential_ids = _credential_channel_ids(AlertChannel, channel_events, CREDENTIAL_TARGET_KINDS)
    earlier_targets = defaultdict(set)
    with_target = channel_events.filter(Q(before__has_key="target") | Q(after__has_key="target"))
    for chunk in _chunks(with_target.only("pk", "object_id", "before", "after")):
        masked = []
        for event in chunk:
            if event.object_id not in credential_ids:
                continue
            snapshots = [snapshot for snapshot in (event.before, event.after) if snapshot and snapshot.get("target")]
            raw = [snapshot for snapshot in snapshots if not is_masked_secret(snapshot["target"])]
            for snapshot in raw:
                earlier_targets[event.object_id].add(snapshot["target"])
                snapshot["target"] = mask_secret(snapshot["target"])
            if raw:
                masked.append(event)
        AuditEvent.objects.bulk_update(masked, ["before", "after"])

    deliveries = (
        AlertDelivery.objects.filter(channel__kind__in=CREDENTIAL_TARGET_KINDS)
        .exclude(last_error="")
        .select_related("channel")
        .only("pk", "last_error", "channel__kind", "channel__target")
    )
    for chunk in _chunks(deliveries):
        masked = []
        for delivery in chunk:
            channel = delivery.channel
            error = delivery.last_error
            # Longest first: a target that another one starts with would leave the rest of the longer one behind.
            for target in sorted({channel.target, *earlier_targets[str(channel.pk)]}, key=len, reverse=True):
                error = without_credential(AlertChannel(kind=channel.kind, target=target), error)
            if error != delivery.last_error:
                delivery.last_error = error
                masked.append(delivery)
        AlertDelivery.objects.bulk_update(masked, ["last_error"])


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0020_budgetalert_refused"),
        ("tenants", "0004_tenant_time_zone_validator"),
    ]

    operations = [
        migrations.RunPython(mask_slack_urls, migrations.RunPython.noop),
    ]
