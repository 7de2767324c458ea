"""When each alert delivery's queued send is due, which the sweep (alert_deliveries_requeue) judges a lost send by.

Deliveries pending before it are given the due time the sweep judged them by until now: one with no attempt its
creation, one with attempts the end of its retries (about 2.5 hours after its creation), so a delivery retrying as
this runs is not queued a second time beside its retry.
"""

from datetime import timedelta

import django.utils.timezone
from django.db import migrations, models
from django.db.models import F

# ALERT_DELIVERY_RETRIES_OVER_AFTER as it was: the retries' countdowns (30 s doubling, up to an hour) plus 30 minutes.
RETRIES_OVER_AFTER = timedelta(seconds=7410, minutes=30)


def due_as_the_sweep_judged_them(apps, schema_editor):
    pending = apps.get_model("billing", "AlertDelivery").objects.filter(status="pending")
    pending.filter(attempts=0).update(next_attempt_at=F("created_at"))
    pending.filter(attempts__gt=0).update(next_attempt_at=F("created_at") + RETRIES_OVER_AFTER)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0023_usage_kind_cache_embedding"),
    ]

    operations = [
        migrations.AddField(
            model_name="alertdelivery",
            name="next_attempt_at",
            field=models.DateTimeField(
                default=django.utils.timezone.now,
                help_text="When the send queued last is due (a retry's after its backoff). Pending well past it, the "
                "send's task was lost, and beat's sweep queues it again.",
            ),
        ),
        migrations.AddIndex(
            model_name="alertdelivery",
            index=models.Index(
                condition=models.Q(("status", "pending")), fields=["next_attempt_at"], name="alert_delivery_pending_due"
            ),
        ),
        # After the schema changes: Postgres refuses to alter a table with updates' trigger events pending.
        migrations.RunPython(due_as_the_sweep_judged_them, migrations.RunPython.noop),
    ]
