import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.alerts.services import alert_channel_create
from billing.models import Anomaly, AnomalyMetric, AnomalyWindow
from tests.budgets.conftest import make_org
from tests.budgets.test_anomalies import NOW, WINDOW_END, ledger_rows, spike_rows

ANOMALY_LINE = re.compile(r"^  anomaly (\d+): (.+)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def small_volume(settings):
    settings.LLMOPS_ANOMALY_MIN_REQUESTS = 5
    settings.LLMOPS_ANOMALY_MIN_SCORE = 5.0


def detect(*args: str) -> str:
    out = StringIO()
    call_command("anomalies_detect", *args, stdout=out)
    return out.getvalue()


def test_a_missed_hour_rerun_stores_prints_and_alerts_its_anomalies_once(
    org, mailoutbox, django_capture_on_commit_callbacks
):
    alert_channel_create(tenant=org.tenant, name="mail", kind="email", target="oncall@example.com")
    ledger_rows(org, hours=15 * 24)
    spike_rows(org, count=40, cost="0.05")
    # Ten minutes into the next hour, as beat would have run it: the windows ending at WINDOW_END are judged.
    with django_capture_on_commit_callbacks(execute=True):
        output = detect("--tenant", org.tenant.slug, "--at", NOW.isoformat())

    printed = dict(ANOMALY_LINE.findall(output))
    stored = Anomaly.objects.unscoped().filter(tenant=org.tenant)
    assert {int(pk) for pk in printed} == set(stored.values_list("pk", flat=True))
    assert f"acme: {len(printed)} new anomalies" in output
    hourly = stored.get(team=None, metric=AnomalyMetric.SPEND, window=AnomalyWindow.HOUR)
    assert hourly.window_end == WINDOW_END
    assert printed[str(hourly.pk)].startswith(
        f"tenant, spend (usd) spike in the hour to {WINDOW_END.isoformat()}: {hourly.observed.normalize():f} "
    )
    assert all(line.endswith("alerted to 1 channel") for line in printed.values())
    # One mail per anomaly, through the tenant's channel, as beat's run sends them.
    assert len(mailoutbox) == len(printed) >= 4
    assert any("spend (usd) spike (hour)" in mail.subject.lower() for mail in mailoutbox)

    with django_capture_on_commit_callbacks(execute=True):
        again = detect("--tenant", org.tenant.slug, "--at", NOW.isoformat())
    assert "acme: 0 new anomalies" in again
    assert not ANOMALY_LINE.search(again)
    assert len(mailoutbox) == len(printed)


def test_without_tenant_every_active_tenant_is_judged(org):
    ledger_rows(org, hours=15 * 24)
    spike_rows(org, count=40, cost="0.05")
    quiet = make_org("quiet")
    closed = make_org("closed")
    closed.tenant.is_active = False
    closed.tenant.save()

    output = detect("--at", NOW.isoformat())

    assert "quiet: 0 new anomalies" in output
    assert re.search(r"^acme: [1-9]\d* new anomalies$", output, re.MULTILINE)
    assert "closed" not in output
    assert not Anomaly.objects.unscoped().filter(tenant__in=[quiet.tenant, closed.tenant]).exists()


def test_the_hour_in_progress_is_judged_with_a_warning(org):
    end_of_this_hour = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    output = detect("--tenant", org.tenant.slug, "--at", end_of_this_hour.isoformat())
    assert "judged on its traffic so far" in output
    assert "acme: 0 new anomalies" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tenant", "nope"), "no tenant with slug 'nope'"),
        (("--at", "2026-11-27T12:00"), "needs a UTC offset"),
        (("--at", "yesterday"), "is not an ISO-8601 date and time"),
    ],
)
def test_bad_arguments_are_refused(org, args, message):
    with pytest.raises(CommandError, match=message):
        detect(*args)
    assert not Anomaly.objects.unscoped().exists()


def test_an_hour_that_has_not_started_is_refused(org):
    later = (timezone.now() + timedelta(hours=2)).isoformat()
    with pytest.raises(CommandError, match="more than an hour ahead"):
        detect("--at", later)
