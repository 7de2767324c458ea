"""Publish hourly rollups to Amazon CloudWatch, for operators who watch CloudWatch rather than Prometheus.

One datum per rollup row and metric, dimensions Tenant (slug) and Model, timestamped at the bucket start.
PutMetricData takes at most 1,000 metric data per call, so data are sent in batches of that size.

CloudWatch adds up what it is sent, so an hour is published once, after it has closed: beat runs
`rollups_cloudwatch_publish_closed_hours` a few minutes past each hour, and a watermark in Redis says which hours
are out already.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta

from billing.finance.rollups import HOUR, floor_hour
from billing.models import UsageRollupHourly
from core.redis import sync_redis

MAX_DATA_PER_CALL = 1000
PUBLISHED_THROUGH_KEY = "llmops:cloudwatch:published-through"
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


def _metric_data(*, since: datetime, until: datetime) -> Iterator[dict]:
    rollups = (
        # Unscoped, reviewed: the operator's metrics cover every tenant, each under its own Tenant dimension.
        UsageRollupHourly.objects.unscoped()
        .filter(bucket_start__gte=since, bucket_start__lt=until)
        .select_related("tenant")
        .order_by("bucket_start", "pk")
    )
    for rollup in rollups.iterator(chunk_size=2000):
        dimensions = [
            {"Name": "Tenant", "Value": rollup.tenant.slug},
            {"Name": "Model", "Value": rollup.served_model or "none"},
        ]
        for name, attribute in PUBLISHED_COUNTS.items():
            yield {
                "MetricName": name,
                "Dimensions": dimensions,
                "Timestamp": rollup.bucket_start,
                "Value": float(getattr(rollup, attribute)),
                "Unit": "Count",
            }
        yield {
            "MetricName": "CostUSD",
            "Dimensions": dimensions,
            "Timestamp": rollup.bucket_start,
            "Value": float(rollup.cost_usd),
            "Unit": "None",
        }


def rollups_publish_cloudwatch(*, since: datetime, until: datetime, namespace: str = "llmops", client=None) -> int:
    """Send the hourly rollups whose bucket starts in [since, until); returns how many data were sent."""
    import boto3

    client = client or boto3.client("cloudwatch")
    batch: list[dict] = []
    sent = 0
    for datum in _metric_data(since=since, until=until):
        batch.append(datum)
        if len(batch) == MAX_DATA_PER_CALL:
            client.put_metric_data(Namespace=namespace, MetricData=batch)
            sent, batch = sent + len(batch), []
    if batch:
        client.put_metric_data(Namespace=namespace, MetricData=batch)
        sent += len(batch)
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
        since = max(since, until - CATCH_UP)
        if since >= until:
            return 0
        sent = rollups_publish_cloudwatch(since=since, until=until, namespace=namespace, client=client)
        redis.set(PUBLISHED_THROUGH_KEY, until.isoformat())
        return sent
    finally:
        lock.release()
