import io
import threading
from bisect import bisect_left
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from billing.finance.rollups import _lock_rollups, latency_p95_ms, usage_rollups_rebuild, usage_rollups_refresh
from billing.finance.tasks import usage_rollups_refresh_task
from billing.ledger.services import usage_records_purge
from billing.models import RollupCursor, UsageKind, UsageRecord, UsageRollupDaily, UsageRollupHourly
from billing.models.rollups import LATENCY_BUCKET_EDGES_MS
from tenants.models import Tenant
from tenants.services import tenant_update
from tests.finance.conftest import make_finance_tenant, usage_row

START = datetime(2025, 3, 3, 22, 10, tzinfo=UTC)


def rollup_snapshot(model) -> list[tuple]:
    fields = [field.attname for field in model._meta.concrete_fields if field.name not in ("id",)]
    return sorted(tuple(str(value) for value in row) for row in model.objects.unscoped().values_list(*fields))


@pytest.fixture
def kolkata(db):
    return make_finance_tenant("kolkata", time_zone="Asia/Kolkata")


def write_usage(setup, *, offsets_minutes, cost="0.0012345678", latency_ms=120):
    UsageRecord.objects.bulk_create(
        [
            usage_row(
                setup.keys[index % 2],
                created_at=START + timedelta(minutes=offset),
                cost=cost,
                latency_ms=latency_ms + index,
            )
            for index, offset in enumerate(offsets_minutes)
        ]
    )


def test_refresh_is_idempotent_and_equals_a_full_rebuild(kolkata):
    write_usage(kolkata, offsets_minutes=[0, 5, 70, 130, 60 * 24])
    assert usage_rollups_refresh() == UsageRecord.objects.unscoped().latest("id").id
    after_first = (rollup_snapshot(UsageRollupHourly), rollup_snapshot(UsageRollupDaily))
    assert usage_rollups_refresh() == 0
    usage_rollups_rebuild(tenant=kolkata.tenant, first=date(2025, 3, 1), last=date(2025, 3, 10))
    assert (rollup_snapshot(UsageRollupHourly), rollup_snapshot(UsageRollupDaily)) == after_first


def test_the_minutely_refresh_skips_while_another_writer_holds_the_lock_and_the_next_folds_what_it_skipped(
    transactional_db,
):
    """A long rebuild holds the rollups' lock: the beat's refresh leaves at once instead of holding a worker the alert
    tasks share, and the rows it left are folded by the next refresh."""
    setup = make_finance_tenant("kolkata", time_zone="Asia/Kolkata")
    assert usage_rollups_refresh() == 0  # the cursor row, as every deployment has it
    write_usage(setup, offsets_minutes=[0, 5, 70])
    held, done = threading.Event(), threading.Event()

    def rebuilding() -> None:
        try:
            with transaction.atomic():
                _lock_rollups()
                held.set()
                done.wait(10)
        finally:
            connection.close()

    writer = threading.Thread(target=rebuilding)
    writer.start()
    assert held.wait(10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '500ms'")  # a refresh that waits fails here rather than hangs
        assert usage_rollups_refresh_task() == 0
    finally:
        done.set()
        writer.join()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert not UsageRollupHourly.objects.unscoped().exists()

    assert usage_rollups_refresh_task() == UsageRecord.objects.unscoped().latest("id").id
    assert sum(UsageRollupHourly.objects.unscoped().values_list("requests", flat=True)) == 3


def test_rollups_sum_to_the_ledger_by_local_day(kolkata):
    write_usage(kolkata, offsets_minutes=[0, 5, 70, 130])
    usage_rollups_refresh()
    # 22:10 UTC is 03:40 the next day in Kolkata.
    daily = UsageRollupDaily.objects.for_tenant(kolkata.tenant)
    assert {rollup.day for rollup in daily} == {date(2025, 3, 4)}
    assert sum(rollup.requests for rollup in daily) == 4
    assert sum(rollup.cost_usd for rollup in daily) == Decimal("0.0049382712")
    hourly = UsageRollupHourly.objects.for_tenant(kolkata.tenant)
    assert sum(rollup.cost_usd for rollup in hourly) == Decimal("0.0049382712")
    assert sorted({rollup.bucket_start.hour for rollup in hourly}) == [0, 22, 23]


def test_late_rows_rebuild_only_their_buckets_and_keep_the_rest(kolkata):
    write_usage(kolkata, offsets_minutes=[0, 180])
    usage_rollups_refresh()
    cursor = RollupCursor.objects.get()
    write_usage(kolkata, offsets_minutes=[1, 2], cost="1.0000000000")
    assert usage_rollups_refresh() == 2
    assert RollupCursor.objects.get().last_usage_id == cursor.last_usage_id + 2
    first_hour = UsageRollupHourly.objects.unscoped().get(
        tenant=kolkata.tenant, bucket_start=START.replace(minute=0), team=kolkata.teams[0]
    )
    assert first_hour.requests == 2
    assert UsageRollupHourly.objects.for_tenant(kolkata.tenant).count() == 3
    assert sum(UsageRollupDaily.objects.unscoped().values_list("requests", flat=True)) == 4


def test_rollups_of_one_tenant_never_touch_another(kolkata):
    other = make_finance_tenant("other")
    write_usage(other, offsets_minutes=[0])
    usage_rollups_refresh()
    write_usage(kolkata, offsets_minutes=[0])
    usage_rollups_refresh()
    assert UsageRollupDaily.objects.for_tenant(other.tenant).get().requests == 1


def test_latency_histogram_records_counts_per_bucket(kolkata):
    write_usage(kolkata, offsets_minutes=[0, 1, 2], latency_ms=49)
    usage_rollups_refresh()
    histogram = UsageRollupDaily.objects.for_tenant(kolkata.tenant).order_by("team_id")[0].latency_histogram
    assert histogram[:2] == [1, 1]


@pytest.mark.parametrize(
    ("histogram", "expected"),
    [
        ([0] * 11, None),
        ([100] + [0] * 10, 47.5),
        ([90, 10] + [0] * 9, 75.0),
        ([0] * 10 + [3], 60_000.0),
    ],
)
def test_p95_estimate_interpolates_inside_the_bucket(histogram, expected):
    assert latency_p95_ms(histogram) == expected


def ledger_by_local_day(tenant, zone) -> dict[tuple, tuple]:
    days: dict[tuple, list] = {}
    for record in UsageRecord.objects.unscoped().filter(tenant=tenant):
        key = (record.created_at.astimezone(zone).date(), record.team_id, record.served_model)
        total = days.setdefault(key, [0, Decimal(0), Decimal(0), 0])
        total[0] += 1
        total[1] += record.cost_usd
        total[2] += record.saved_routing_usd
        total[3] += record.total_latency_ms
    return {key: tuple(total) for key, total in days.items()}


def daily_rollups(tenant) -> dict[tuple, tuple]:
    """The tenant's daily rollups, in the shape of ledger_by_local_day."""
    return {
        (rollup.day, rollup.team_id, rollup.served_model): (
            rollup.requests,
            rollup.cost_usd,
            rollup.saved_routing_usd,
            rollup.latency_sum_ms,
        )
        for rollup in UsageRollupDaily.objects.for_tenant(tenant)
    }


def test_days_summed_from_hours_equal_the_ledger_across_a_daylight_saving_change(db):
    new_york = make_finance_tenant("new-york", time_zone="America/New_York")
    zone = ZoneInfo("America/New_York")
    # Sunday 9 March 2025 has 23 hours in New York.
    start = datetime(2025, 3, 8, 20, tzinfo=zone)
    rows = []
    for index in range(60):
        row = usage_row(
            new_york.keys[index % 2], created_at=start + timedelta(minutes=47 * index), latency_ms=40 + 37 * index
        )
        row.saved_routing_usd = Decimal("0.0000000003") * index
        rows.append(row)
    UsageRecord.objects.bulk_create(rows)

    usage_rollups_refresh()

    daily = daily_rollups(new_york.tenant)
    assert daily == ledger_by_local_day(new_york.tenant, zone)
    assert {day for day, _, _ in daily} == {date(2025, 3, 8), date(2025, 3, 9), date(2025, 3, 10)}
    histograms = [rollup.latency_histogram for rollup in UsageRollupDaily.objects.for_tenant(new_york.tenant)]
    expected = [0] * (len(LATENCY_BUCKET_EDGES_MS) + 1)
    for row in rows:
        expected[bisect_left(LATENCY_BUCKET_EDGES_MS, row.total_latency_ms)] += 1
    assert [sum(column) for column in zip(*histograms, strict=True)] == expected


def requests_by_day(tenant) -> dict[date, int]:
    days: dict[date, int] = {}
    for rollup in UsageRollupDaily.objects.for_tenant(tenant):
        days[rollup.day] = days.get(rollup.day, 0) + rollup.requests
    return days


def test_a_tenant_with_an_unknown_time_zone_stops_no_other_tenants_rollups(kolkata, caplog):
    # Stored past the field's validation (written before it, or by .update()).
    bad = make_finance_tenant("bad-zone")
    Tenant.objects.unscoped().filter(pk=bad.tenant.pk).update(time_zone="Europe/Londn")
    write_usage(bad, offsets_minutes=[0])
    write_usage(kolkata, offsets_minutes=[0, 5])

    usage_rollups_refresh()

    assert requests_by_day(kolkata.tenant) == {date(2025, 3, 4): 2}
    # The bad zone's days are counted in UTC: 22:10 UTC is still 3 March.
    assert requests_by_day(bad.tenant) == {date(2025, 3, 3): 1}
    assert "unknown tenant time zone 'Europe/Londn'" in caplog.text


def test_the_latency_histogram_counts_requests_and_no_call_made_for_one(kolkata):
    request = usage_row(kolkata.keys[0], created_at=START, latency_ms=700)
    calls = []
    for kind, latency_ms in [
        (UsageKind.FAILED_ATTEMPT, 30),
        (UsageKind.CACHE_EMBEDDING, 3),
        (UsageKind.COMPRESSION_SUMMARY, 2_500),
    ]:
        call = usage_row(kolkata.keys[0], created_at=START + timedelta(minutes=1), latency_ms=latency_ms)
        call.kind, call.parent_request_id = kind, request.request_id
        calls.append(call)
    UsageRecord.objects.bulk_create([request, *calls])

    usage_rollups_refresh()

    for model in (UsageRollupHourly, UsageRollupDaily):
        rollup = model.objects.for_tenant(kolkata.tenant).get()
        assert rollup.requests == 1
        assert rollup.latency_sum_ms == 700
        assert rollup.latency_histogram == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        # Their cost is still the bucket's.
        assert rollup.cost_usd == Decimal("0.0000400000")


def test_a_bucket_of_calls_only_has_an_empty_histogram(kolkata):
    call = usage_row(kolkata.keys[0], created_at=START, latency_ms=30)
    call.kind, call.parent_request_id = UsageKind.FAILED_ATTEMPT, "req-gone"
    UsageRecord.objects.bulk_create([call])

    usage_rollups_refresh()

    rollup = UsageRollupDaily.objects.for_tenant(kolkata.tenant).get()
    assert (rollup.requests, rollup.latency_sum_ms, sum(rollup.latency_histogram)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("old_zone", "new_zone"),
    [
        # Days summed from the hours; Berlin's days begin before New York's.
        ("Europe/Berlin", "America/New_York"),
        # A half-hour zone's days are summed from the ledger; New York's begin before Kolkata's.
        ("America/New_York", "Asia/Kolkata"),
    ],
)
def test_a_new_time_zone_moves_every_daily_rollup_to_its_days(
    db, eager_celery, django_capture_on_commit_callbacks, old_zone, new_zone
):
    setup = make_finance_tenant("moving", time_zone=old_zone)
    start = datetime(2025, 3, 8, 20, tzinfo=UTC)
    UsageRecord.objects.bulk_create(
        usage_row(setup.keys[index % 2], created_at=start + timedelta(minutes=47 * index), latency_ms=40 + 37 * index)
        for index in range(60)
    )
    usage_rollups_refresh()

    setup.tenant.time_zone = new_zone
    with django_capture_on_commit_callbacks(execute=True):
        tenant_update(tenant=setup.tenant)

    # Months before the nightly rebuild's two days, with no new row to touch them: the zone change moved them.
    assert daily_rollups(setup.tenant) == ledger_by_local_day(setup.tenant, ZoneInfo(new_zone))


def test_the_rebuild_command_rewrites_older_rollups_and_keeps_the_purged_days(kolkata):
    write_usage(kolkata, offsets_minutes=[0, 60 * 24, 60 * 48])
    usage_rollups_refresh()
    before = {rollup.day: rollup.latency_histogram for rollup in UsageRollupDaily.objects.for_tenant(kolkata.tenant)}
    # Histograms as an older release wrote them, and the first day's ledger rows purged since.
    UsageRollupHourly.objects.for_tenant(kolkata.tenant).update(latency_histogram=[9] * 11)
    UsageRollupDaily.objects.for_tenant(kolkata.tenant).update(latency_histogram=[9] * 11)
    usage_records_purge(before=datetime(2025, 3, 5, tzinfo=ZoneInfo("Asia/Kolkata")), tenant=kolkata.tenant)

    out = io.StringIO()
    call_command("usage_rollups_rebuild", "--since", "2025-03-01", "--tenant", "kolkata", stdout=out)

    assert out.getvalue().startswith("kolkata: rebuilt 2025-03-05 to ")
    after = {rollup.day: rollup.latency_histogram for rollup in UsageRollupDaily.objects.for_tenant(kolkata.tenant)}
    assert after == {
        date(2025, 3, 4): [9] * 11,
        date(2025, 3, 5): before[date(2025, 3, 5)],
        date(2025, 3, 6): before[date(2025, 3, 6)],
    }


def test_the_rebuild_command_keeps_the_hours_a_purge_emptied_within_the_oldest_rows_day(kolkata):
    """The purge cut inside the tenant's local day (at midnight UTC, say): the hours of that day before the oldest row
    left keep the totals their rollups hold, so that day is not rebuilt from the ledger."""
    write_usage(kolkata, offsets_minutes=[0, 120])
    usage_rollups_refresh()
    hours_before = rollup_snapshot(UsageRollupHourly)
    usage_records_purge(before=START + timedelta(minutes=60), tenant=kolkata.tenant)

    out = io.StringIO()
    call_command("usage_rollups_rebuild", "--since", "2025-03-01", "--tenant", "kolkata", stdout=out)

    assert rollup_snapshot(UsageRollupHourly) == hours_before
    assert out.getvalue().startswith("kolkata: rebuilt 2025-03-05 to ")


def test_a_new_time_zone_moves_the_days_whose_ledger_rows_were_purged(
    db, eager_celery, django_capture_on_commit_callbacks
):
    setup = make_finance_tenant("purged", time_zone="UTC")
    write_usage(setup, offsets_minutes=[0, 60 * 24, 60 * 48])
    usage_rollups_refresh()
    usage_records_purge(before=datetime(2025, 3, 5, tzinfo=UTC), tenant=setup.tenant)

    setup.tenant.time_zone = "Asia/Tokyo"
    with django_capture_on_commit_callbacks(execute=True):
        tenant_update(tenant=setup.tenant)

    # Summed from the hours, which the purge left: 22:10 UTC is 07:10 the next day in Tokyo.
    assert requests_by_day(setup.tenant) == {date(2025, 3, 4): 1, date(2025, 3, 5): 1, date(2025, 3, 6): 1}
