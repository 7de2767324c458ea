import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import boto3
import pytest
from django.urls import reverse
from moto import mock_aws

from billing.finance.statements import statement_build, statement_csv
from billing.finance.tasks import statement_push_task, statements_push_task
from billing.models import UsageRecord
from tenants.models import Tenant
from tests.factories import UserFactory
from tests.finance.conftest import usage_row

MARCH = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def march_usage(acme, globex):
    UsageRecord.objects.bulk_create(
        [
            usage_row(acme.keys[0], created_at=MARCH + timedelta(days=1), cost="0.1250000001", model="m-small"),
            usage_row(acme.keys[0], created_at=MARCH + timedelta(days=2), cost="0.1250000001", model="m-large"),
            usage_row(acme.keys[1], created_at=MARCH + timedelta(days=30), cost="2.0000000000", model="m-large"),
            # April in UTC: outside the statement.
            usage_row(acme.keys[1], created_at=MARCH + timedelta(days=31, hours=1), cost="5.0000000000"),
            usage_row(globex.keys[0], created_at=MARCH + timedelta(days=3), cost="7.0000000000"),
        ]
    )
    return acme


def test_statement_totals_by_team_and_model_equal_the_ledger(march_usage):
    statement = statement_build(tenant=march_usage.tenant, month=date(2025, 3, 1))
    assert statement.total_usd == Decimal("2.2500000002")
    assert statement.by_team == {"acme-search": Decimal("0.2500000002"), "acme-support": Decimal("2.0000000000")}
    assert statement.by_model == {"m-large": Decimal("2.1250000001"), "m-small": Decimal("0.1250000001")}
    assert statement.savings == {lever: 0 for lever in ("cache", "routing", "compression", "batch", "provider_cache")}
    rows = list(csv.reader(io.StringIO(statement_csv(statement))))
    lines = [row for row in rows if row[0] == "line"]
    assert sum(Decimal(row[7]) for row in lines) == Decimal("2.2500000002")
    assert ["total", "", "", "3", "", "", "", "2.2500000002", "2.25"] in rows


def test_statement_page_prints_and_downloads_csv(client, march_usage):
    client.force_login(march_usage.finance_user)
    url = reverse("admin:billing_usage_statement")
    page = client.get(url, {"tenant": "acme", "month": "2025-03"})
    assert page.status_code == 200
    assert "2.25" in page.content.decode() and "@media print" not in page.content.decode()
    download = client.get(url, {"tenant": "acme", "month": "2025-03", "format": "csv"})
    assert download["Content-Disposition"] == 'attachment; filename="statement-acme-2025-03.csv"'
    assert "7.0000000000" not in download.content.decode()


@pytest.mark.parametrize("month", ["9999-12", "0001-01", "1969-12", "2025-13", "garbage", "99999999999999999999-01"])
def test_a_month_outside_the_ledgers_range_or_not_a_month_is_a_400(client, march_usage, month):
    client.force_login(march_usage.finance_user)
    url = reverse("admin:billing_usage_statement")

    refused = client.get(url, {"tenant": "acme", "month": month, "format": "csv"})

    assert refused.status_code == 400 and b"YYYY-MM" in refused.content


def test_statement_of_another_tenant_answers_404(client, march_usage, globex):
    client.force_login(globex.finance_user)
    url = reverse("admin:billing_usage_statement")
    assert client.get(url, {"tenant": "acme", "month": "2025-03"}).status_code == 404


def test_a_tenant_slug_with_a_nul_byte_answers_404(client, march_usage):
    # PostgreSQL refuses NUL in text; the slug must not reach it.
    client.force_login(march_usage.finance_user)
    url = reverse("admin:billing_usage_statement")
    assert client.get(url, {"tenant": "acme\x00", "month": "2025-03"}).status_code == 404


def test_statement_of_a_tenant_with_an_unknown_time_zone_counts_utc_days(client, march_usage):
    # Stored past the field's validation (written before it, or by .update()).
    Tenant.objects.unscoped().filter(pk=march_usage.tenant.pk).update(time_zone="Europe/Londn")
    client.force_login(march_usage.finance_user)
    url = reverse("admin:billing_usage_statement")

    page = client.get(url, {"tenant": "acme", "month": "2025-03"})

    assert page.status_code == 200 and "2.25" in page.content.decode()


def test_statement_without_a_month_is_the_current_month_in_the_tenants_time_zone(client, march_usage, monkeypatch):
    """At 04:00 UTC on April 1st it is still March 31st, 21:00, in Los Angeles: its statement is March's."""
    Tenant.objects.unscoped().filter(pk=march_usage.tenant.pk).update(time_zone="America/Los_Angeles")
    client.force_login(march_usage.finance_user)
    monkeypatch.setattr("billing.finance.admin.timezone.now", lambda: datetime(2025, 4, 1, 4, tzinfo=UTC))

    page = client.get(reverse("admin:billing_usage_statement"), {"tenant": "acme"})

    assert page.status_code == 200
    assert page.context["statement"].month == date(2025, 3, 1) and page.context["month_value"] == "2025-03"


@pytest.fixture
def statements_bucket(settings, monkeypatch):
    """An S3 bucket for statements (moto), as LLMOPS_STATEMENTS_BUCKET; yields its client."""
    settings.LLMOPS_STATEMENTS_BUCKET = "finance-statements"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="finance-statements")
        yield s3


def test_monthly_job_pushes_every_tenants_statement_to_s3(
    march_usage, globex, statements_bucket, eager_celery, monkeypatch
):
    s3 = statements_bucket
    with monkeypatch.context() as patch:
        patch.setattr("billing.finance.tasks.timezone.now", lambda: datetime(2025, 4, 1, 4, tzinfo=UTC))
        assert statements_push_task.delay().get() == 2
    body = s3.get_object(Bucket="finance-statements", Key="statements/acme/2025-03.csv")["Body"].read().decode()
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket="finance-statements")["Contents"])
    assert keys == ["statements/acme/2025-03.csv", "statements/globex/2025-03.csv"]
    assert "2.2500000002" in body and "7.0000000000" not in body


def test_a_tenant_whose_month_has_not_ended_in_its_time_zone_is_not_pushed_yet(
    march_usage, globex, statements_bucket, eager_celery, monkeypatch
):
    """At 04:00 UTC on April 1st it is still March 31st, 21:00, in Los Angeles: that statement would miss the month's
    last hours. The run of the 2nd pushes it, with a row from 23:30 local time on March 31st."""
    Tenant.objects.unscoped().filter(pk=globex.tenant.pk).update(time_zone="America/Los_Angeles")
    UsageRecord.objects.bulk_create(
        [usage_row(globex.keys[0], created_at=datetime(2025, 4, 1, 6, 30, tzinfo=UTC), cost="3")]
    )
    s3 = statements_bucket
    with monkeypatch.context() as patch:
        patch.setattr("billing.finance.tasks.timezone.now", lambda: datetime(2025, 4, 1, 4, tzinfo=UTC))
        assert statements_push_task.delay().get() == 1
        first = [item["Key"] for item in s3.list_objects_v2(Bucket="finance-statements")["Contents"]]
        patch.setattr("billing.finance.tasks.timezone.now", lambda: datetime(2025, 4, 2, 4, tzinfo=UTC))
        assert statements_push_task.delay().get() == 2
    body = s3.get_object(Bucket="finance-statements", Key="statements/globex/2025-03.csv")["Body"].read().decode()
    assert first == ["statements/acme/2025-03.csv"]
    assert "10.0000000000" in body  # its $7 of March 4th and the $3 of 23:30 on March 31st, local time


def test_monthly_job_without_a_broker_tries_every_tenant_when_s3_refuses(
    march_usage, globex, settings, eager_celery, monkeypatch, caplog
):
    """Run eagerly (the embedded default), a push S3 refuses is retried at once and its last failure logged, as a
    worker would; it does not raise into the monthly job, which goes on to the next tenant."""
    settings.LLMOPS_STATEMENTS_BUCKET = "no-such-bucket"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws(), monkeypatch.context() as patch:
        patch.setattr("billing.finance.tasks.timezone.now", lambda: datetime(2025, 4, 1, 4, tzinfo=UTC))
        assert statements_push_task.delay().get() == 2
    failures = [record for record in caplog.records if record.name == "core.task_retries"]
    assert [record.getMessage() for record in failures] == [
        f"task billing.tasks_finance.statement_push_task failed after {statement_push_task.max_retries + 1} attempts"
    ] * 2


def test_admin_action_exports_selected_rows_of_one_tenant(client, march_usage, globex):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    url = reverse("admin:billing_usagerecord_changelist")
    acme_ids = list(UsageRecord.objects.unscoped().filter(tenant=march_usage.tenant).values_list("pk", flat=True)[:2])
    response = client.post(url, {"action": "export_selected_csv", "_selected_action": acme_ids})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 2
    mixed = acme_ids + list(UsageRecord.objects.unscoped().filter(tenant=globex.tenant).values_list("pk", flat=True))
    refused = client.post(url, {"action": "export_selected_csv", "_selected_action": mixed}, follow=True)
    assert "exactly one tenant" in refused.content.decode()


def test_admin_action_skips_rows_of_tenants_the_user_may_not_export(client, march_usage, globex):
    client.force_login(globex.finance_user)
    acme_ids = list(UsageRecord.objects.unscoped().filter(tenant=march_usage.tenant).values_list("pk", flat=True))
    response = client.post(
        reverse("admin:billing_usagerecord_changelist"),
        {"action": "export_selected_csv", "_selected_action": acme_ids},
        follow=True,
    )
    assert not getattr(response, "streaming", False)
    assert "0.1250000001" not in response.content.decode()
