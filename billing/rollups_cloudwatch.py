"""Publish hourly rollups to Amazon CloudWatch, for operators who watch CloudWatch rather than Prometheus.

One datum per rollup row and metric, dimensions Tenant (slug) and Model, timestamped at the bucket start.
PutMetricData takes at most 1,000 metric data per call, so data are sent in batches of that size.
"""

from collections.abc import Iterator
from datetime import datetime

from billing.models import UsageRollupHourly

MAX_DATA_PER_CALL = 1000
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
        UsageRollupHourly.objects.filter(bucket_start__gte=since, bucket_start__lt=until)
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
