"""The sum of every export equals the ledger to the last decimal, for any ledger, range, zone and grouping."""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import combinations
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.finance.exports import export_params_parse, usage_export_chunks
from billing.models import UsageRecord
from tests.finance.conftest import make_finance_tenant, usage_row

EPOCH = datetime(2025, 3, 1, tzinfo=UTC)
ZONES = ["UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham"]
GROUPINGS = [",".join(combo) for size in (1, 2, 3) for combo in combinations(["day", "team", "key", "model"], size)]

ledger_rows = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=40 * 24 * 3600 - 1),
        st.integers(min_value=0, max_value=1),
        st.sampled_from(["m-small", "m-large", ""]),
        st.decimals(min_value=0, max_value=Decimal("3"), places=10, allow_nan=False, allow_infinity=False),
        st.sampled_from([200, 200, 429, 502]),
    ),
    max_size=60,
)


def export_csv(tenant, **params) -> list[dict]:
    body = b"".join(usage_export_chunks(tenant=tenant, params=export_params_parse(**params)))
    return list(csv.DictReader(io.StringIO(body.decode())))


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=ledger_rows,
    zone=st.sampled_from(ZONES),
    start_day=st.integers(min_value=0, max_value=35),
    length=st.integers(min_value=1, max_value=10),
    group_by=st.sampled_from(GROUPINGS),
)
def test_aggregate_and_request_exports_sum_to_the_ledger(rows, zone, start_day, length, group_by):
    with transaction.atomic():
        setup = make_finance_tenant("recon", time_zone=zone)
        other = make_finance_tenant("recon-other")
        records = [
            usage_row(
                setup.keys[key_index],
                created_at=EPOCH + timedelta(seconds=second),
                model=model,
                cost=cost,
                http_status=status,
            )
            for second, key_index, model, cost, status in rows
        ]
        # Another tenant's rows in the same hours must never count.
        records += [usage_row(other.keys[0], created_at=EPOCH + timedelta(seconds=s), cost="1") for s, *_ in rows]
        UsageRecord.objects.bulk_create(records)
        since = date(2025, 3, 1) + timedelta(days=start_day)
        until = since + timedelta(days=length - 1)

        local = ZoneInfo(zone)
        expected = [
            record
            for record in records
            if record.tenant_id == setup.tenant.pk and since <= record.created_at.astimezone(local).date() <= until
        ]
        ledger_total = sum((record.cost_usd for record in expected), Decimal(0))

        per_request = export_csv(setup.tenant, since=since, until=until)
        aggregate = export_csv(setup.tenant, since=since, until=until, group_by=group_by)

        assert len(per_request) == len(expected)
        assert sum(Decimal(row["cost_usd"]) for row in per_request) == ledger_total
        assert sum(Decimal(row["cost_usd"]) for row in aggregate) == ledger_total
        assert sum(int(row["requests"]) for row in aggregate) == len(expected)
        assert all(len(row["cost_usd"].split(".")[1]) == 10 for row in per_request + aggregate)
        transaction.set_rollback(True)


@pytest.mark.django_db
def test_rounded_column_rounds_half_to_even(acme):
    day = datetime(2025, 3, 3, 12, tzinfo=UTC)
    UsageRecord.objects.bulk_create(
        [
            usage_row(acme.keys[0], created_at=day, cost="0.0050000000"),
            usage_row(acme.keys[0], created_at=day + timedelta(seconds=1), cost="0.0150000000"),
        ]
    )
    rows = export_csv(acme.tenant, since=date(2025, 3, 3), until=date(2025, 3, 3))
    assert [(row["cost_usd"], row["cost_usd_rounded"]) for row in rows] == [
        ("0.0050000000", "0.00"),
        ("0.0150000000", "0.02"),
    ]
