from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from billing.finance.cloudwatch import (
    MAX_DATA_PER_CALL,
    PUBLISHED_COUNTS,
    rollups_cloudwatch_publish_closed_hours,
    rollups_publish_cloudwatch,
)
from billing.finance.rollups import usage_rollups_refresh
from billing.models import UsageRecord
from tests.finance.conftest import usage_row

START = datetime(2025, 3, 3, tzinfo=UTC)


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="us-east-1")


def test_hourly_rollups_are_published_in_batches_of_at_most_1000(acme, aws):
    hours = 150
    UsageRecord.objects.bulk_create(
        [usage_row(acme.keys[0], created_at=START + timedelta(hours=hour), model="m-small") for hour in range(hours)]
    )
    usage_rollups_refresh()
    calls = []
    original = aws.put_metric_data

    def counting_put(**kwargs):
        calls.append(len(kwargs["MetricData"]))
        return original(**kwargs)

    aws.put_metric_data = counting_put
    sent = rollups_publish_cloudwatch(since=START, until=START + timedelta(hours=hours), client=aws)
    per_rollup = len(PUBLISHED_COUNTS) + 1
    assert sent == hours * per_rollup
    assert max(calls) <= MAX_DATA_PER_CALL and sum(calls) == sent and len(calls) == 2
    statistics = aws.get_metric_statistics(
        Namespace="llmops",
        MetricName="Requests",
        Dimensions=[{"Name": "Tenant", "Value": "acme"}, {"Name": "Model", "Value": "m-small"}],
        StartTime=START,
        EndTime=START + timedelta(hours=hours),
        Period=3600 * 24 * 7,
        Statistics=["Sum"],
    )
    assert sum(point["Sum"] for point in statistics["Datapoints"]) == hours


def _requests_sum(aws, *, since: datetime, until: datetime) -> float:
    statistics = aws.get_metric_statistics(
        Namespace="llmops-test",
        MetricName="Requests",
        Dimensions=[{"Name": "Tenant", "Value": "acme"}, {"Name": "Model", "Value": "m-small"}],
        StartTime=since,
        EndTime=until,
        Period=3600,
        Statistics=["Sum"],
    )
    return sum(point["Sum"] for point in statistics["Datapoints"])


def test_each_closed_hour_is_published_once_and_the_open_hour_waits(acme, aws, settings):
    if not settings.REDIS_URL:
        pytest.skip("the publisher's watermark lives in Redis")
    rows = [usage_row(acme.keys[0], created_at=START + timedelta(minutes=10 * step)) for step in range(18)]
    UsageRecord.objects.bulk_create(rows)
    usage_rollups_refresh()

    def publish(at: datetime) -> int:
        return rollups_cloudwatch_publish_closed_hours(namespace="llmops-test", now=at, client=aws)

    # At 01:30 only hour 00 has closed; its six rows go out, hour 01 waits.
    assert publish(START + timedelta(hours=1, minutes=30)) == len(PUBLISHED_COUNTS) + 1
    assert publish(START + timedelta(hours=1, minutes=45)) == 0
    # At 03:05, hours 01 and 02 go out, and hour 00 is not sent again.
    assert publish(START + timedelta(hours=3, minutes=5)) == 2 * (len(PUBLISHED_COUNTS) + 1)
    assert _requests_sum(aws, since=START, until=START + timedelta(hours=1)) == 6
    assert _requests_sum(aws, since=START, until=START + timedelta(hours=3)) == 18
