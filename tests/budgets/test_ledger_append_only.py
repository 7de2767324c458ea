"""The ledger is append-only in the database itself: updates and deletes are refused from the ORM and from raw SQL,
and the retention purge is the one way rows leave."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from billing.ledger.services import usage_records_purge
from billing.models import ImmutableRowError, UsageRecord
from tests.budgets.conftest import make_org

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def record(org, request_id: str, *, days_ago: int, cost: str = "1") -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=request_id,
        tenant=org.tenant,
        team=org.team,
        api_key=org.api_key,
        cost_usd=Decimal(cost),
        http_status=200,
        created_at=NOW - timedelta(days=days_ago),
    )


def test_queryset_update_and_delete_are_refused(org):
    record(org, "r1", days_ago=1)

    with pytest.raises(ImmutableRowError):
        UsageRecord.objects.unscoped().filter(request_id="r1").update(cost_usd=0)
    with pytest.raises(ImmutableRowError):
        UsageRecord.objects.unscoped().all().delete()

    assert UsageRecord.objects.unscoped().get().cost_usd == 1


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE billing_usagerecord SET cost_usd = 0",
        "DELETE FROM billing_usagerecord",
        "DELETE FROM billing_usagerecord WHERE request_id = 'r1'",
    ],
)
def test_raw_sql_updates_and_deletes_are_refused_by_the_database(org, sql):
    if connection.vendor != "postgresql":
        pytest.skip("the trigger is Postgres's; SQLite keeps the model's guards")
    record(org, "r1", days_ago=1)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)

    assert UsageRecord.objects.unscoped().get().cost_usd == 1


def test_a_purge_setting_outside_the_purge_does_not_allow_updates(org):
    if connection.vendor != "postgresql":
        pytest.skip("the trigger is Postgres's")
    record(org, "r1", days_ago=1)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL llmops.ledger_purge = 'on'")
        cursor.execute("UPDATE billing_usagerecord SET cost_usd = 0")


def test_the_retention_purge_removes_old_rows_only(org):
    other = make_org("globex")
    record(org, "old", days_ago=40)
    record(org, "recent", days_ago=2)
    record(other, "theirs-old", days_ago=40)

    assert usage_records_purge(before=NOW - timedelta(days=30), tenant=org.tenant) == 1
    assert set(UsageRecord.objects.unscoped().values_list("request_id", flat=True)) == {"recent", "theirs-old"}

    out = StringIO()
    call_command("ledger_purge", "--before", (NOW - timedelta(days=30)).date().isoformat(), stdout=out)
    assert "Deleted 1 usage records" in out.getvalue()
    assert list(UsageRecord.objects.unscoped().values_list("request_id", flat=True)) == ["recent"]
    if connection.vendor != "postgresql":
        return
    # Outside the purge the trigger is back on.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM billing_usagerecord")
