"""A tenant's new time zone moves its daily rollups through a real Celery worker: the task tenant_update queues is
found by name and run by the worker process, not only in eager mode."""

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing.finance.rollups import usage_rollups_refresh
from billing.models import UsageRecord
from tenants.services import tenant_update
from tests.batch.conftest import celery_worker, live_broker  # noqa: F401 (live_broker is a fixture)
from tests.finance.conftest import make_finance_tenant, usage_row
from tests.finance.test_rollups import daily_rollups, ledger_by_local_day

pytestmark = pytest.mark.live


def test_a_real_worker_moves_the_daily_rollups_to_the_new_zones_days(transactional_db, live_broker, settings, tmp_path):  # noqa: F811
    settings.MEDIA_ROOT = tmp_path / "media"
    setup = make_finance_tenant("moving", time_zone="Europe/Berlin")
    start = datetime(2025, 3, 8, 20, tzinfo=UTC)
    UsageRecord.objects.bulk_create(
        usage_row(setup.keys[index % 2], created_at=start + timedelta(minutes=47 * index)) for index in range(40)
    )
    usage_rollups_refresh()
    expected = ledger_by_local_day(setup.tenant, ZoneInfo("America/New_York"))
    assert daily_rollups(setup.tenant) != expected

    running = celery_worker().start()
    try:
        setup.tenant.time_zone = "America/New_York"
        tenant_update(tenant=setup.tenant)
        deadline = time.monotonic() + 30
        while daily_rollups(setup.tenant) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        running.kill()

    assert daily_rollups(setup.tenant) == expected
