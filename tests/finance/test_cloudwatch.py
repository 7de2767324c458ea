from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from billing.finance import cloudwatch
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


def _requests_sum(aws, *, since: datetime, until: datetime, model: str = "m-small") -> float:
    statistics = aws.get_metric_statistics(
        Namespace="llmops-test",
        MetricName="Requests",
        Dimensions=[{"Name": "Tenant", "Value": "acme"}, {"Name": "Model", "Value": model}],
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


def test_a_run_that_fails_part_way_sends_again_only_what_had_not_gone_out(acme, aws, settings, monkeypatch):
    """CloudWatch adds up what it is sent: after a batch is refused, the next run starts after the last row that went
    out, in the middle of an hour as at its end, so every figure equals the ledger's."""
    if not settings.REDIS_URL:
        pytest.skip("the publisher's watermark lives in Redis")
    models = [f"m-{index}" for index in range(4)]
    UsageRecord.objects.bulk_create(
        [
            usage_row(acme.keys[0], created_at=START + timedelta(hours=hour, minutes=minute), model=model)
            for hour in range(2)
            for minute, model in enumerate(models)
        ]
    )
    usage_rollups_refresh()
    # Three rows a call: hour 00's first three; its last and hour 01's first two; hour 01's last two.
    monkeypatch.setattr(cloudwatch, "MAX_DATA_PER_CALL", 3 * (len(PUBLISHED_COUNTS) + 1))
    original, calls = aws.put_metric_data, []

    def second_call_refused(**kwargs):
        calls.append(len(kwargs["MetricData"]))
        if len(calls) == 2:
            raise ClientError({"Error": {"Code": "InternalServiceFault"}}, "PutMetricData")
        return original(**kwargs)

    aws.put_metric_data = second_call_refused

    def publish(at: datetime = START + timedelta(hours=2, minutes=5)) -> int:
        return rollups_cloudwatch_publish_closed_hours(namespace="llmops-test", now=at, client=aws)

    assert publish(START + timedelta(minutes=5)) == 0  # the hours before START are out
    with pytest.raises(ClientError):
        publish()

    assert publish() == 5 * (len(PUBLISHED_COUNTS) + 1)
    for model in models:
        for hour in range(2):
            since = START + timedelta(hours=hour)
            assert _requests_sum(aws, since=since, until=since + timedelta(hours=1), model=model) == 1, (model, hour)
    assert publish() == 0
