"""Dashboard and export time on a ledger of one million rows. A figure, not a test.

Creates a dedicated Postgres database (dropped and recreated each run), loads the ledger with COPY, then
times: building the rollups from scratch, the incremental refresh with nothing new, the dashboard (selector
and the full admin page; then, with a day of traffic ending now, the page open with fresh rollups and the one that
folds in a minute of new rows first), and streaming the per-request and an aggregate CSV export of the month.

    .venv/bin/python bench/finance.py --rows 1000000
    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmops_finance_bench (the default)
"""

import argparse
import os
import random
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "llmops_finance_bench"
DASHBOARD = "/admin/billing/usagerecord/finance/dashboard/"


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment

    # Tables straight from the models (no migration files needed); the database is this bench's own.
    settings.DATABASES["default"]["TEST"].update({"NAME": BENCH_DB, "MIGRATE": False})
    setup_test_environment()
    connection.creation.create_test_db(verbosity=0, autoclobber=True)


def timed(label: str, action):
    started = time.perf_counter()
    result = action()
    print(f"{label:<52} {time.perf_counter() - started:8.2f} s")
    return result


def bench_tenant():
    from tenants.services import api_key_create, tenant_create

    tenant = tenant_create(slug="bench", name="Bench", team_slugs=[f"team-{index}" for index in range(6)])
    keys = [api_key_create(team=team)[0] for team in tenant.teams.all() for _ in range(2)]
    return tenant, keys


def load_ledger(*, tenant, keys, rows: int, start: datetime, span_seconds: int, prefix: str = "bench"):
    from django.db import connection

    from billing.models import UsageRecord

    models = ["bench-small", "bench-medium", "bench-large"]
    randomness = random.Random(prefix)
    generated = {
        "request_id": None,
        "tenant_id": tenant.pk,
        "team_id": None,
        "api_key_id": None,
        "served_model": None,
        "requested_model": "auto",
        "prompt_tokens": None,
        "completion_tokens": None,
        "cost_usd": None,
        "total_latency_ms": None,
        "cache_status": None,
        "http_status": None,
        "created_at": None,
    }
    fields = [field for field in UsageRecord._meta.concrete_fields if field.name != "id"]
    defaults = {field.attname: field.get_default() for field in fields}
    columns = [field.column for field in fields]
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY billing_usagerecord ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for index in range(rows):
            key = keys[index % len(keys)]
            miss = randomness.random() > 0.18
            values = {
                **defaults,
                **generated,
                "request_id": f"{prefix}-{index}",
                "team_id": key.team_id,
                "api_key_id": key.pk,
                "served_model": models[index % 3],
                "prompt_tokens": 200 + index % 1500,
                "completion_tokens": 50 + index % 400,
                "cost_usd": Decimal(index % 9973) / Decimal(10_000_000) if miss else Decimal(0),
                "total_latency_ms": int(randomness.lognormvariate(6.3, 0.6)) if miss else 8,
                "cache_status": "miss" if miss else "hit-exact",
                "http_status": 502 if index % 97 == 0 else 200,
                "created_at": start + timedelta(seconds=randomness.randrange(span_seconds)),
            }
            copy.write_row([values[field.attname] for field in fields])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usagerecord")


def _refresh_until_current(refresh) -> None:
    while refresh():
        pass


def time_page_open_with_new_rows(client, *, tenant, keys, rows: int, days: int) -> None:
    """The dashboard opened when beat is behind: the last day of traffic (at the ledger's rate) is folded in, then a
    minute of new rows older than LLMOPS_ROLLUPS_MAX_AGE_SECONDS arrives and the page open folds it in."""
    from django.utils import timezone

    from billing.finance.rollups import usage_rollups_refresh

    per_day, now = rows // days, timezone.now()
    day_start = now - timedelta(days=1, minutes=2)
    load_ledger(tenant=tenant, keys=keys, rows=per_day, start=day_start, span_seconds=86400, prefix="day")
    _refresh_until_current(usage_rollups_refresh)
    page = {"tenant": tenant.pk}
    timed("dashboard: page open, rollups fresh, 14 days", lambda: client.get(DASHBOARD, page))
    minute = max(per_day // 1440, 1)
    load_ledger(tenant=tenant, keys=keys, rows=minute, start=now - timedelta(minutes=2), span_seconds=60, prefix="new")
    timed(f"dashboard: page open folding in {minute:,} new rows", lambda: client.get(DASHBOARD, page))
    assert usage_rollups_refresh() == 0, "the page open left rows out of the rollups"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    arguments = parser.parse_args()
    setup_django(os.environ.get("BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"))

    from django.contrib.auth.models import User
    from django.test import Client

    from billing.finance.dashboard import dashboard_build
    from billing.finance.exports import export_params_parse, usage_export_chunks
    from billing.finance.rollups import usage_rollups_rebuild, usage_rollups_refresh
    from billing.models import UsageRollupDaily, UsageRollupHourly

    first_day = date(2025, 3, 1)
    last_day = first_day + timedelta(days=arguments.days - 1)
    print(f"ledger: {arguments.rows:,} rows over {arguments.days} days, one tenant, 6 teams, 12 keys, 3 models")
    tenant, keys = bench_tenant()
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC)
    timed(
        "load ledger (COPY)",
        lambda: load_ledger(
            tenant=tenant, keys=keys, rows=arguments.rows, start=start, span_seconds=arguments.days * 86400
        ),
    )
    timed(
        "rollups: full rebuild of the month",
        lambda: usage_rollups_rebuild(tenant=tenant, first=first_day, last=last_day),
    )
    timed(
        "rollups: incremental refresh, catching up on all rows", lambda: _refresh_until_current(usage_rollups_refresh)
    )
    timed("rollups: incremental refresh, nothing new", usage_rollups_refresh)
    hourly, daily = UsageRollupHourly.objects.unscoped().count(), UsageRollupDaily.objects.unscoped().count()
    print(f"  rollup rows: {hourly:,} hourly, {daily:,} daily")
    timed("dashboard: selector, 30 days", lambda: dashboard_build(tenant=tenant, since=first_day, until=last_day))
    client = Client()
    client.force_login(User.objects.create_superuser("bench-admin", "bench@example.com", "x"))
    page = {"tenant": tenant.pk, "since": first_day, "until": last_day}
    client.get(DASHBOARD, {"tenant": tenant.pk, "since": last_day, "until": last_day})  # warm: imports, templates
    timed(
        "dashboard: admin page rendered, 30 days",
        lambda: client.get(DASHBOARD, page),
    )

    time_page_open_with_new_rows(client, tenant=tenant, keys=keys, rows=arguments.rows, days=arguments.days)

    def stream(group_by: str) -> int:
        params = export_params_parse(since=first_day, until=last_day, group_by=group_by)
        return sum(len(chunk) for chunk in usage_export_chunks(tenant=tenant, params=params))

    size = timed("export: per-request CSV, whole month, streamed", lambda: stream(""))
    print(f"  {size / 1e6:,.1f} MB")
    timed("export: aggregate CSV by day,team,model", lambda: stream("day,team,model"))


if __name__ == "__main__":
    main()
