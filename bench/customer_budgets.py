"""What a per-customer budget costs the reservation path: a customer's first request of a period, whose counter is
set from that customer's ledger rows (one indexed query, plus the ledger stream's backlog), against its later
requests, which only run the reserve script; and the Redis keys they leave.

Against real Postgres and Redis, in one process (no gateway, no upstream): ``--ledger-rows`` ledger rows of the
bench tenant spread over ``--customers`` customers and this month, then ``--customers`` customers each reserving and
settling twice, ``--concurrency`` at a time, under a default per-customer daily budget. Prints per-reservation
latency percentiles of first and later requests, and the counters' keys and TTL. Figures, not a test.

    .venv/bin/python bench/customer_budgets.py --redis-url redis://127.0.0.1:6379/11
"""

import argparse
import asyncio
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import ensure_database, percentile

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench-customers"


def setup(database_url: str, redis_url: str, ledger_rows: int, customers: int):
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    os.environ["LLMOPS_LEDGER_MODE"] = "stream"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from billing.budgets.index import build_budget_index
    from billing.budgets.services import budget_create
    from billing.models import Budget, UsageRecord
    from core.redis import sync_redis
    from tenants.models import ApiKey, Team, Tenant
    from tenants.services import api_key_create, team_create, tenant_create

    call_command("migrate", verbosity=0)
    sync_redis().flushdb()
    tenant = Tenant.objects.unscoped().filter(slug=TENANT).first()
    if tenant is None:
        tenant = tenant_create(slug=TENANT, name="Bench customers")
        team = team_create(tenant=tenant, slug="app", name="App")
        key, _ = api_key_create(team=team, name="bench")
        now = datetime.now(UTC)
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        span = max((now - first).total_seconds(), 1)
        rows = [
            UsageRecord(
                request_id=f"bench-{index}",
                tenant=tenant,
                team=team,
                api_key=key,
                customer=f"customer-{random.randrange(customers)}",
                cost_usd=Decimal("0.0001"),
                http_status=200,
                created_at=first + timedelta(seconds=random.random() * span),
            )
            for index in range(ledger_rows)
        ]
        UsageRecord.objects.bulk_create(rows, batch_size=5000)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE billing_usagerecord")
    Budget.objects.for_tenant(tenant).delete()
    budget_create(tenant=tenant, scope="customer", period="day", limit_usd=Decimal(1000))
    team = Team.objects.for_tenant(tenant).get()
    key = ApiKey.objects.for_tenant(tenant).get()
    return build_budget_index(tenant_id=tenant.pk), tenant, team, key


async def run(index, tenant, team, key, customers: int, concurrency: int) -> tuple[list[float], list[float]]:
    from billing.budgets.reservations import budget_reserve, reservation_settle

    gate = asyncio.Semaphore(concurrency)
    first, later = [], []

    async def one(number: int, timings: list[float]) -> None:
        customer = f"customer-{number}"
        budgets = index.applicable(tenant.pk, team.pk, key.pk, "m", customer)
        async with gate:
            started = time.perf_counter()
            reservation = await budget_reserve(
                budgets=budgets, amount=Decimal("0.01"), request_id=f"r-{number}-{len(timings)}",
                now=datetime.now(UTC), customer=customer,
            )  # fmt: skip
            timings.append((time.perf_counter() - started) * 1000)
            await reservation_settle(reservation, actual=Decimal("0.001"))

    await asyncio.gather(*(one(number, first) for number in range(customers)))
    await asyncio.gather(*(one(number, later) for number in range(customers)))
    return first, later


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/llmops_bench_customers")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--ledger-rows", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    ensure_database(args.database_url)
    index, tenant, team, key = setup(args.database_url, args.redis_url, args.ledger_rows, args.customers)
    from billing.models import UsageRecord
    from core.redis import sync_redis

    first, later = asyncio.run(run(index, tenant, team, key, args.customers, args.concurrency))
    ledger = UsageRecord.objects.for_tenant(tenant)
    rows, named = ledger.count(), ledger.values("customer").distinct().count()
    reserving = f"{args.customers:,} reserving, {args.concurrency} at once"
    print(f"ledger: {rows:,} rows of {named:,} customers this month; {reserving}")
    for name, timings in (("first request of the day (seeds)", first), ("later requests", later)):
        p50, p99 = percentile(timings, 0.5), percentile(timings, 0.99)
        print(f"{name:<36} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   n={len(timings)}")
    client = sync_redis()
    keys = [key for key in client.scan_iter("llmops:budget:*") if not key.endswith(b":pending")]
    ttls = [client.ttl(key) for key in keys]
    print(f"counters in Redis: {len(keys):,}, TTL {min(ttls) / 3600:.1f} h to {max(ttls) / 3600:.1f} h")


if __name__ == "__main__":
    main()
