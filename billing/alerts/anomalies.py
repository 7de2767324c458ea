"""Anomaly detection over the ledger: the last hour and the last day against a robust 14-day baseline.

For each tenant, and each of its teams, every metric of the window ending at the last full hour is
compared with the same window on each of the 14 days before (the hour window with the same hour of
day, so a quiet night is not compared with a busy afternoon). The baseline is the median of those 14
values and its spread the median absolute deviation (MAD), which one bad day cannot move. The score
is (observed - median) / max(1.4826 * MAD, floor), the floor keeping a flat baseline from flagging
noise. Metrics are judged only with volume: at least half the baseline windows, and for the ratios
the window itself, need LLMOPS_ANOMALY_MIN_REQUESTS requests.

Each hourly run stores what it finds, but alerts once per episode: a window that was already anomalous in the
same direction an hour before (a day-window spike stays in view for 24 runs) is the same episode, not news.
"""

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models.functions import TruncHour

from billing.alerts.services import anomaly_alert_raise
from billing.ledger.totals import LedgerTotals, ledger_aggregates
from billing.models import (
    COST_FIELD,
    PRODUCT_ROWS,
    AlertDelivery,
    Anomaly,
    AnomalyDirection,
    AnomalyMetric,
    AnomalyWindow,
    UsageRecord,
)
from tenants.models import Tenant

BASELINE_DAYS = 14
MAD_TO_SIGMA = Decimal("1.4826")  # makes the MAD comparable to a standard deviation for normal data
SCORE_QUANTUM = Decimal("0.0001")
VALUE_QUANTUM = Decimal(1).scaleb(-COST_FIELD["decimal_places"])
RELATIVE_FLOOR = Decimal("0.1")  # deviations under 10% of the median are never a spike on their own
ABSOLUTE_FLOORS = {
    AnomalyMetric.SPEND: Decimal("0.01"),
    AnomalyMetric.TOKENS_PER_REQUEST: Decimal(1),
    AnomalyMetric.CACHE_HIT_RATE: Decimal("0.02"),
    AnomalyMetric.ERROR_RATE: Decimal("0.02"),
}
WINDOW_HOURS = {AnomalyWindow.HOUR: 1, AnomalyWindow.DAY: 24}


TRAFFIC_TOTALS = ("requests", "errors", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd")


def metric_value(traffic: LedgerTotals, metric: str) -> Decimal:
    if metric == AnomalyMetric.SPEND:
        return traffic.cost_usd
    requests = Decimal(traffic.requests)
    if metric == AnomalyMetric.TOKENS_PER_REQUEST:
        return Decimal(traffic.tokens) / requests
    if metric == AnomalyMetric.CACHE_HIT_RATE:
        return Decimal(traffic.cache_hits) / requests
    return Decimal(traffic.errors) / requests


@dataclass(frozen=True, slots=True)
class Finding:
    metric: str
    observed: Decimal
    median: Decimal
    mad: Decimal
    score: Decimal

    @property
    def direction(self) -> str:
        return AnomalyDirection.SPIKE if self.score > 0 else AnomalyDirection.DROP


def robust_finding(*, metric: str, observed: Decimal, baseline: list[Decimal]) -> Finding:
    median = statistics.median(baseline)
    mad = statistics.median(abs(value - median) for value in baseline)
    scale = max(MAD_TO_SIGMA * mad, RELATIVE_FLOOR * abs(median), ABSOLUTE_FLOORS[metric])
    score = ((observed - median) / scale).quantize(SCORE_QUANTUM)
    return Finding(metric=metric, observed=observed, median=median, mad=mad, score=score)


def window_findings(*, observed: LedgerTotals, baseline: list[LedgerTotals], min_requests: int) -> list[Finding]:
    """Findings for every metric the volume allows judging, anomalous or not."""
    busy = [traffic for traffic in baseline if traffic.requests >= min_requests]
    if len(busy) * 2 < len(baseline) or not baseline:
        return []
    findings = [
        robust_finding(
            metric=AnomalyMetric.SPEND, observed=observed.cost_usd, baseline=[traffic.cost_usd for traffic in baseline]
        )
    ]
    if observed.requests >= min_requests:
        for metric in (AnomalyMetric.TOKENS_PER_REQUEST, AnomalyMetric.CACHE_HIT_RATE, AnomalyMetric.ERROR_RATE):
            findings.append(
                robust_finding(
                    metric=metric,
                    observed=metric_value(observed, metric),
                    baseline=[metric_value(traffic, metric) for traffic in busy],
                )
            )
    return findings


def _hourly_traffic(
    *, tenant: Tenant, since: datetime, until: datetime
) -> dict[int | None, dict[datetime, LedgerTotals]]:
    """Traffic per team and hour, plus the tenant's total under the key None."""
    rows = (
        UsageRecord.objects.for_tenant(tenant)
        # Product traffic: turning shadow evaluation on is no spend spike.
        .filter(PRODUCT_ROWS, created_at__gte=since, created_at__lt=until)
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values("team_id", "hour")
        .annotate(**ledger_aggregates(*TRAFFIC_TOTALS))
    )
    hourly: dict[int | None, dict[datetime, LedgerTotals]] = defaultdict(lambda: defaultdict(LedgerTotals))
    for row in rows:
        traffic = LedgerTotals.of(row)
        hourly[row["team_id"]][row["hour"]].add(traffic)
        hourly[None][row["hour"]].add(traffic)
    return hourly


def _traffic_between(hours: dict[datetime, LedgerTotals], start: datetime, end: datetime) -> LedgerTotals:
    total = LedgerTotals()
    for hour, traffic in hours.items():
        if start <= hour < end:
            total.add(traffic)
    return total


def anomaly_min_requests() -> int:
    """LLMOPS_ANOMALY_MIN_REQUESTS, checked where detection reads it: a window without a request has no ratio."""
    min_requests = settings.LLMOPS_ANOMALY_MIN_REQUESTS
    if min_requests < 1:
        raise ImproperlyConfigured(
            f"LLMOPS_ANOMALY_MIN_REQUESTS must be 1 or more (it is {min_requests}): the rates are judged per request"
        )
    return min_requests


def anomaly_window_end(now: datetime) -> datetime:
    """The end of the windows judged as of `now`: the last full hour."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def tenant_anomalies_find(*, tenant: Tenant, now: datetime) -> list[Anomaly]:
    """The anomalies of the windows ending at the last full hour before `now`, unsaved: tenant_anomalies_detect
    stores them; `manage.py anomalies_detect` stores the spikes of an hour not over yet and prints its drops."""
    window_end = anomaly_window_end(now)
    day = timedelta(days=1)
    min_requests = anomaly_min_requests()
    min_score = Decimal(str(settings.LLMOPS_ANOMALY_MIN_SCORE))
    hourly = _hourly_traffic(tenant=tenant, since=window_end - (BASELINE_DAYS + 1) * day, until=window_end)
    found = []
    for team_id, hours in hourly.items():
        for window, window_hours in WINDOW_HOURS.items():
            length = timedelta(hours=window_hours)
            observed = _traffic_between(hours, window_end - length, window_end)
            baseline = [
                _traffic_between(hours, window_end - length - days_back * day, window_end - days_back * day)
                for days_back in range(1, BASELINE_DAYS + 1)
            ]
            for finding in window_findings(observed=observed, baseline=baseline, min_requests=min_requests):
                if abs(finding.score) >= min_score:
                    found.append(
                        Anomaly(
                            tenant=tenant,
                            team_id=team_id,
                            metric=finding.metric,
                            window=window,
                            window_end=window_end,
                            observed=finding.observed.quantize(VALUE_QUANTUM),
                            baseline_median=finding.median.quantize(VALUE_QUANTUM),
                            baseline_mad=finding.mad.quantize(VALUE_QUANTUM),
                            score=finding.score,
                            direction=finding.direction,
                        )
                    )
    return found


def tenant_anomalies_detect(
    *, tenant: Tenant, now: datetime, deliveries_send: Callable[[list[AlertDelivery]], None]
) -> list[Anomaly]:
    """Store the anomalies of the windows ending at the last full hour before `now`, as anomalies_record does."""
    return anomalies_record(tenant_anomalies_find(tenant=tenant, now=now), deliveries_send=deliveries_send)


def anomalies_record(found: list[Anomaly], *, deliveries_send: Callable[[list[AlertDelivery]], None]) -> list[Anomaly]:
    """Store the anomalies found that are new (a window judged before adds nothing). Each new anomaly's alert
    deliveries go to `deliveries_send` (alert_deliveries_send queues them) inside the transaction that stores it, so
    an anomaly stored is an anomaly alerted even when a later one fails. A finding stored stands for its whole
    window: of a window not over yet, pass only what the rest of it cannot undo."""
    return [anomaly for each in found if (anomaly := _anomaly_record(each, deliveries_send)) is not None]


def _anomaly_record(found: Anomaly, deliveries_send) -> Anomaly | None:
    with transaction.atomic():
        anomaly, created = Anomaly.objects.for_tenant(found.tenant).get_or_create(
            tenant=found.tenant,
            team_id=found.team_id,
            metric=found.metric,
            window=found.window,
            window_end=found.window_end,
            defaults={
                "observed": found.observed,
                "baseline_median": found.baseline_median,
                "baseline_mad": found.baseline_mad,
                "score": found.score,
                "direction": found.direction,
            },
        )
        if not created:
            return None
        continues = (
            Anomaly.objects.for_tenant(found.tenant)
            .filter(
                team_id=found.team_id,
                metric=found.metric,
                window=found.window,
                direction=found.direction,
                window_end=found.window_end - timedelta(hours=1),
            )
            .exists()
        )
        if not continues:
            deliveries_send(anomaly_alert_raise(anomaly=anomaly))
    return anomaly
