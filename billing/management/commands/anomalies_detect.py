import argparse
from datetime import datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.alerts.anomalies import anomalies_record, anomaly_window_end, tenant_anomalies_find
from billing.alerts.tasks import alert_deliveries_send
from billing.models import Anomaly, AnomalyDirection
from tenants.selectors import tenant_by_slug, tenants_active


def parse_moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not an ISO-8601 date and time") from None
    if timezone.is_naive(moment):
        raise argparse.ArgumentTypeError(f"'{value}' needs a UTC offset, e.g. 2026-12-04T22:00Z")
    return moment


class Command(BaseCommand):
    help = (
        "Run anomaly detection now, as beat does hourly, or as of --at: the windows ending at the last full hour "
        "before that moment are judged against their 14-day baseline. New anomalies are stored and alerted to the "
        "tenant's active channels; a window judged before adds nothing. In the hour in progress (--at up to an hour "
        "ahead) a spike is stored and alerted, a drop only printed: it may only mean the hour is not over."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", dest="tenant_slug", metavar="SLUG", help="Default: every active tenant.")
        parser.add_argument(
            "--at",
            type=parse_moment,
            metavar="ISO-8601",
            help="Default: now. An earlier time re-runs a missed hour; up to an hour ahead judges the hour in "
            "progress on its traffic so far (its drops printed, not stored or alerted).",
        )

    def handle(self, *args, tenant_slug, at, **options):
        now = timezone.now()
        at = at or now
        if at - timedelta(hours=1) > now:
            raise CommandError(f"--at {at.isoformat()} is more than an hour ahead: that hour has not started yet")
        if tenant_slug:
            tenants = [tenant] if (tenant := tenant_by_slug(slug=tenant_slug)) is not None else []
            if not tenants:
                raise CommandError(f"no tenant with slug '{tenant_slug}'")
        else:
            tenants = list(tenants_active().order_by("slug"))
        self.stdout.write(f"Anomaly detection as of {at.isoformat()}")
        in_progress = anomaly_window_end(at) > now
        if in_progress:
            self.stdout.write(
                "The hour in progress is judged on its traffic so far: a drop may mean it is not over, and is only "
                "printed; a spike is stored and alerted, and beat judges the rest of the hour once it has ended."
            )
        for tenant in tenants:
            kept, drops = [], []
            for found in tenant_anomalies_find(tenant=tenant, now=at):
                # A drop in the hour in progress may only mean it is not over; stored, it would stand for the whole
                # hour and the run once it ends would add nothing. A spike is in traffic already seen.
                (drops if in_progress and found.direction == AnomalyDirection.DROP else kept).append(found)
            anomalies = anomalies_record(kept, deliveries_send=alert_deliveries_send)
            noun = "anomaly" if len(anomalies) == 1 else "anomalies"
            self.stdout.write(f"{tenant.slug}: {len(anomalies)} new {noun}")
            for anomaly in anomalies:
                self.stdout.write(f"  {_describe(anomaly)}")
            for drop in drops:
                self.stdout.write(f"  so far, not stored or alerted: {_numbers(drop)}")


def _describe(anomaly: Anomaly) -> str:
    alerted = anomaly.deliveries.count()
    return (
        f"anomaly {anomaly.pk}: {_numbers(anomaly)}; alerted to {alerted} {'channel' if alerted == 1 else 'channels'}"
    )


def _numbers(anomaly: Anomaly) -> str:
    who = f"team {anomaly.team.slug}" if anomaly.team_id else "tenant"
    return (
        f"{who}, {anomaly.get_metric_display().lower()} {anomaly.direction} in the {anomaly.window} to "
        f"{anomaly.window_end.isoformat()}: {anomaly.observed.normalize():f} against a median of "
        f"{anomaly.baseline_median.normalize():f} (MAD {anomaly.baseline_mad.normalize():f}), score {anomaly.score}"
    )
