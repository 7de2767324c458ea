"""Publish hourly rollups to Amazon CloudWatch, for operators who watch CloudWatch rather than Prometheus.

One datum per rollup row and metric, dimensions Tenant (slug) and Model, timestamped at the bucket start.
PutMetricData takes at most 1,000 metric data per call, so data are sent in batches of whole rows, at most that many.

CloudWatch adds up what it is sent, so an hour is published once, after it has closed: beat runs
`rollups_cloudwatch_publish_closed_hours` a few minutes past each hour, and a watermark in Redis says which hours
are out already. It moves on with each batch CloudWatch took (to the last row sent: its hour, and its tenant, team
and model within the hour), so a run that fails part way through sends only what had not gone out when it is run
again.
"""

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import groupby
from operator import attrgetter

import orjson

from billing.finance.rollups import HOUR, floor_hour
from billing.models import UsageRollupHourly
from core.redis import sync_redis

MAX_DATA_PER_CALL = 1000
PUBLISHED_THROUGH_KEY = "llmops:cloudwatch:published-through"
# [hour, tenant id, team id, model] of the last row sent of the hour PUBLISHED_THROUGH_KEY names, while that hour is
# out only in part.
PUBLISHED_ROW_KEY = "llmops:cloudwatch:published-row"
PUBLISH_LOCK_KEY = "llmops:cloudwatch:publishing"
# After an outage (or on the first run) the closed hours of at most this long ago are published.
CATCH_UP = timedelta(days=1)
PUBLISHED_COUNTS = {
    "Requests": "requests",
    "Errors": "errors",
    "CacheHits": "cache_hits",
    "RoutedToLarge": "routed_to_large",
    "PromptTokens": "prompt_tokens",
    "CompletionTokens": "completion_tokens",
}


DATA_PER_ROW = len(PUBLISHED_COUNTS) + 1

# A rollup row's place within its hour: tenant id, team id, served model (unique per hour, and kept when the hour is
# rebuilt, as its id is not).
RowKey = tuple[int, int, str]


def _row_key(rollup: UsageRollupHourly) -> RowKey:
    return rollup.tenant_id, rollup.team_id, rollup.served_model


def _rollups(*, since: datetime, until: datetime, after: RowKey | None) -> Iterator[UsageRollupHourly]:
    """The hourly rollups whose bucket starts in [since, until) by hour, then by row key (ordered here, not by the
    database's collation, so that `after` compares as the order runs); of hour `since`, only the rows after `after`."""
    rollups = (
        # Unscoped, reviewed: the operator's metrics cover every tenant, each under its own Tenant dimension.
        UsageRollupHourly.objects.unscoped()
        .filter(bucket_start__gte=since, bucket_start__lt=until)
        .select_related("tenant")
        .order_by("bucket_start")
    )
    for hour, rows in groupby(rollups.iterator(chunk_size=2000), key=attrgetter("bucket_start")):
        for rollup in sorted(rows, key=_row_key):
            if after is None or hour != since or _row_key(rollup) > after:
                yield rollup


def _metric_data(rollup: UsageRollupHourly) -> list[dict]:
    dimensions = [
        {"Name": "Tenant", "Value": rollup.tenant.slug},
        {"Name": "Model", "Value": rollup.served_model or "none"},
    ]
    data = [
        {
            "MetricName": name,
            "Dimensions": dimensions,
            "Timestamp": rollup.bucket_start,
            "Value": float(getattr(rollup, attribute)),
            "Unit": "Count",
        }
        for name, attribute in PUBLISHED_COUNTS.items()
    ]
    data.append(
        {
            "MetricName": "CostUSD",
            "Dimensions": dimensions,
            "Timestamp": rollup.bucket_start,
            "Value": float(rollup.cost_usd),
            "Unit": "None",
        }
    )
    return data


def rollups_publish_cloudwatch(
    *,
    since: datetime,
    until: datetime,
    namespace: str = "llmops",
    client=None,
    after: RowKey | None = None,
    sent_through: Callable[[datetime, RowKey], None] | None = None,
) -> int:
    """Send the hourly rollups whose bucket starts in [since, until), of hour `since` only the rows after `after`;
    returns how many data were sent. Each call holds the data of whole rows; once CloudWatch took one,
    `sent_through(hour, row key)` is told the last row it held."""
    import boto3

    client = client or boto3.client("cloudwatch")
    batch: list[dict] = []
    last: UsageRollupHourly | None = None
    sent = 0

    def send() -> None:
        nonlocal batch, sent
        client.put_metric_data(Namespace=namespace, MetricData=batch)
        sent, batch = sent + len(batch), []
        if sent_through is not None:
            sent_through(last.bucket_start, _row_key(last))

    for last in _rollups(since=since, until=until, after=after):
        batch += _metric_data(last)
        if len(batch) + DATA_PER_ROW > MAX_DATA_PER_CALL:
            send()
    if batch:
        send()
    return sent


def rollups_cloudwatch_publish_closed_hours(*, namespace: str, now: datetime, client=None) -> int:
    """Publish the hours that closed since the last run, each once; returns how many data were sent.

    The first run publishes the hour before `now`'s. A run that finds another one running does nothing.
    """
    redis = sync_redis()
    until = floor_hour(now)
    lock = redis.lock(PUBLISH_LOCK_KEY, timeout=600, blocking=False)
    if not lock.acquire():
        return 0
    try:
        published_through = redis.get(PUBLISHED_THROUGH_KEY)
        since = datetime.fromisoformat(published_through.decode()) if published_through else until - HOUR
        after = _published_row(redis, hour=since)
        if since < until - CATCH_UP:
            since, after = until - CATCH_UP, None
        if since >= until:
            return 0

        def note(hour: datetime, key: RowKey) -> None:
            redis.pipeline().set(PUBLISHED_THROUGH_KEY, hour.isoformat()).set(
                PUBLISHED_ROW_KEY, orjson.dumps([hour.isoformat(), *key])
            ).execute()

        sent = rollups_publish_cloudwatch(
            since=since, until=until, namespace=namespace, client=client, after=after, sent_through=note
        )
        redis.pipeline().set(PUBLISHED_THROUGH_KEY, until.isoformat()).delete(PUBLISHED_ROW_KEY).execute()
        return sent
    finally:
        lock.release()


def _published_row(redis, *, hour: datetime) -> RowKey | None:
    """The last row of `hour` sent, when the hour went out only in part."""
    raw = redis.get(PUBLISHED_ROW_KEY)
    if raw is None:
        return None
    noted_hour, tenant_id, team_id, model = orjson.loads(raw)
    return (tenant_id, team_id, model) if datetime.fromisoformat(noted_hour) == hour else None
