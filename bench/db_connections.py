"""Postgres connections per process: psycopg's pool (the default) against a connection opened and closed per request
(DB_POOL_MAX_SIZE=0), on the admin, /api and /v1.

For each mode it starts the mock upstream and the gateway (uvicorn, `--workers`) as processes (bench/overhead.py's
helpers), logs a superuser in, then drives admin pages, /api GETs and /v1 chat completions, each kind `--requests`
times at `--concurrency`, and prints p50/p95 and requests per second of each, with the most connections the gateway
held at once. With `--redis-url` the ledger is streamed and /v1 touches the database only for what it writes
there (rarely); without it every /v1 request inserts its ledger row. A figure, not a test.

    .venv/bin/python bench/db_connections.py --requests 600 --concurrency 16 --redis-url redis://127.0.0.1:6379/8
"""

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import (
    database_url_argument,
    ensure_database,
    percentile,
    refuse_busy_port,
    setup_bench_tenant,
    start_mock_and_gateway,
)

APPLICATION_NAME = "llmops-bench-connections"
MODES = {"pool": "8", "per-request": "0"}


def admin_session() -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench-admin").first() or user_model.objects.create_superuser(
        "bench-admin", "bench-admin@example.com", None
    )
    browser = Client()
    browser.force_login(user)
    return browser.cookies["sessionid"].value


class PeakConnections:
    def __init__(self, database_url: str):
        self.database_url, self.peak, self.stop = database_url, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            while not self.stop.is_set():
                self.peak = max(self.peak, connection.execute(query, [APPLICATION_NAME]).fetchone()[0])
                self.stop.wait(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


async def drive(base_url: str, requests: list[tuple[str, str, dict | None]], *, concurrency: int, cookies, headers):
    """Latencies of the answers, the seconds it all took, and how many answers were not 200 (a pool that stayed busy
    longer than DB_POOL_TIMEOUT answers 503 on /v1, 500 on the admin)."""
    latencies: list[float] = []
    failed = 0
    pending = iter(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, cookies=cookies, headers=headers, limits=limits, timeout=60
    ) as client:

        async def worker():
            nonlocal failed
            for method, path, body in pending:
                started = time.perf_counter()
                response = await client.request(method, path, json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                failed += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="per kind of request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the mock upstream's own latency")
    database_url_argument(parser)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", ""))
    parser.add_argument("--mock-port", type=int, default=9192)
    parser.add_argument("--gateway-port", type=int, default=8192)
    args = parser.parse_args()

    refuse_busy_port(args.mock_port)
    refuse_busy_port(args.gateway_port)
    ensure_database(args.database_url)
    os.environ["REDIS_URL"] = args.redis_url
    upstream_url = f"http://127.0.0.1:{args.mock_port}/v1"
    key = setup_bench_tenant(args.database_url, upstream_url)
    session = admin_session()
    kinds = {
        "admin": [("GET", "/admin/billing/usagerecord/", None), ("GET", "/admin/tenants/apikey/", None)],
        "api": [
            ("GET", "/api/budgets/?tenant=bench", None),
            ("GET", "/api/usage/?tenant=bench&since=2026-01-01&until=2026-01-31", None),
        ],
        "v1": [
            (
                "POST",
                "/v1/chat/completions",
                {
                    "model": "bench-small",
                    "messages": [{"role": "user", "content": "Classify: refund"}],
                    "max_tokens": 16,
                },
            )
        ],
    }
    results = []
    for mode, pool_size in MODES.items():
        env = {
            **os.environ,
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "LOG_LEVEL": "WARNING",
            "DB_POOL_MAX_SIZE": pool_size,
            "PGAPPNAME": APPLICATION_NAME,
            "LLMOPS_CACHE_EMBEDDER": "",
        }
        processes = start_mock_and_gateway(
            mock_port=args.mock_port,
            gateway_port=args.gateway_port,
            latency_ms=args.latency_ms,
            env=env,
            workers=args.workers,
        )
        base_url = f"http://127.0.0.1:{args.gateway_port}"
        options = {"concurrency": args.concurrency, "cookies": {"sessionid": session}}
        options["headers"] = {"authorization": f"Bearer {key}"}
        try:
            for kind, requests in kinds.items():
                plan = [requests[index % len(requests)] for index in range(args.requests)]
                asyncio.run(drive(base_url, plan[: args.requests // 5], **options))
                with PeakConnections(args.database_url) as peak:
                    latencies, seconds, failed = asyncio.run(drive(base_url, plan, **options))
                results.append((mode, kind, latencies, seconds, peak.peak, failed))
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=10)

    print(
        f"requests={args.requests} per kind, concurrency={args.concurrency}, gateway workers={args.workers}, "
        f"ledger={'stream' if args.redis_url else 'direct'}, cpus={os.cpu_count()}"
    )
    print(
        f"{'mode':<13}{'kind':<7}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'req/s':>8}{'peak conns':>12}{'not 200':>9}"
    )
    for mode, kind, latencies, seconds, peak, failed in results:
        print(
            f"{mode:<13}{kind:<7}{percentile(latencies, 0.5):>9.1f}{percentile(latencies, 0.95):>9.1f}"
            f"{statistics.fmean(latencies):>9.1f}{len(latencies) / seconds:>8.0f}{peak:>12}{failed:>9}"
        )


if __name__ == "__main__":
    main()
