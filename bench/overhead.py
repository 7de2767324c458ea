"""Added latency of the gateway over calling the mock upstream directly.

Starts the mock upstream and the gateway (uvicorn, the way production runs it) as separate
processes on loopback, creates a bench tenant in the database, then drives the same chat
completion at a fixed concurrency, first straight at the mock and then through the gateway,
and prints p50/p95/p99 of each and of the difference. A figure, not a test. With ``--api messages`` the gateway is
driven through Anthropic's /v1/messages (the same body, translated at the edge) instead of /v1/chat/completions.

    .venv/bin/python bench/overhead.py --requests 2000 --concurrency 8
"""

import argparse
import asyncio
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Each gateway route the bench can drive: its path, and the header that carries the key (with its prefix). The bench's
# body (model, messages, max_tokens) is valid on both.
GATEWAY_ROUTES = {
    "chat": ("/v1/chat/completions", "authorization", "Bearer "),
    "messages": ("/v1/messages", "x-api-key", ""),
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def setup_bench_tenant(database_url: str, upstream_url: str) -> str:
    """Create (or reuse) the bench tenant and return a fresh key for it."""
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.core.management import call_command

    from routing.models import Model, Provider
    from routing.services import model_create, provider_create, tenant_model_access_set
    from tenants.selectors import tenant_by_slug
    from tenants.services import api_key_create, tenant_create

    call_command("migrate", verbosity=0)
    tenant = tenant_by_slug(slug="bench") or tenant_create(slug="bench", team_slugs=["load"])
    provider = Provider.objects.filter(name="bench-mock").first() or provider_create(
        name="bench-mock", base_url=upstream_url
    )
    if provider.base_url != upstream_url:
        provider.base_url = upstream_url
        provider.save()
    model = Model.objects.filter(name="bench-small").first() or model_create(
        name="bench-small",
        provider=provider,
        upstream_name="mock-small",
        input_price_per_million=Decimal("0.15"),
        cached_input_price_per_million=Decimal("0.075"),
        output_price_per_million=Decimal("0.60"),
    )
    tenant_model_access_set(tenant=tenant, allowed_models=[model], default_model=model)
    _, key = api_key_create(team=tenant.teams.get(slug="load"), name="bench")
    return key


def refuse_busy_port(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is in use: stop what listens there, or pass another port")


def wait_until_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_mock_and_gateway(
    *, mock_port: int, gateway_port: int, latency_ms: float, env: dict, workers: int = 1
) -> list[subprocess.Popen]:
    """The mock upstream and the gateway (uvicorn), as separate processes, once both answer."""
    mock = [PYTHON, "manage.py", "mock_upstream", "--port", str(mock_port), "--latency-ms", str(latency_ms)]
    gateway = [
        PYTHON,
        "-m",
        "uvicorn",
        "llmops.asgi:application",
        "--port",
        str(gateway_port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    processes = [
        subprocess.Popen(mock, cwd=ROOT, env=env, stdout=subprocess.DEVNULL),
        subprocess.Popen(gateway, cwd=ROOT, env=env),
    ]
    try:
        wait_until_up(f"http://127.0.0.1:{mock_port}/v1/models")
        wait_until_up(f"http://127.0.0.1:{gateway_port}/healthz")
    except RuntimeError:
        for process in processes:
            process.terminate()
        raise
    return processes


async def drive(url: str, headers: dict, body: dict, *, requests: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker():
            for _ in remaining:
                started = time.perf_counter()
                response = await client.post(url, json=body, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def database_url_argument(parser: argparse.ArgumentParser) -> None:
    """``--database-url``: the benches' own Postgres database (``BENCH_DATABASE_URL``), which ``ensure_database``
    creates when it is missing."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/llmops_bench"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the mock upstream's own latency")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--api", choices=sorted(GATEWAY_ROUTES), default="chat", help="the gateway route driven")
    database_url_argument(parser)
    parser.add_argument("--mock-port", type=int, default=9190)
    parser.add_argument("--gateway-port", type=int, default=8190)
    args = parser.parse_args()

    refuse_busy_port(args.mock_port)
    refuse_busy_port(args.gateway_port)
    ensure_database(args.database_url)
    upstream_url = f"http://127.0.0.1:{args.mock_port}/v1"
    key = setup_bench_tenant(args.database_url, upstream_url)
    env = {**os.environ, "DATABASE_URL": args.database_url, "LOG_LEVEL": "WARNING"}
    processes = start_mock_and_gateway(
        mock_port=args.mock_port,
        gateway_port=args.gateway_port,
        latency_ms=args.latency_ms,
        env=env,
        workers=args.workers,
    )
    try:
        body = {
            "model": "bench-small",
            "messages": [{"role": "user", "content": "Classify this ticket: refund"}],
            "max_tokens": 16,
        }
        direct = (f"{upstream_url}/chat/completions", {"authorization": "Bearer mock"})
        path, key_header, key_prefix = GATEWAY_ROUTES[args.api]
        gateway = (f"http://127.0.0.1:{args.gateway_port}{path}", {key_header: f"{key_prefix}{key}"})
        warmup = min(200, args.requests)
        for url, headers in (direct, gateway):
            asyncio.run(drive(url, headers, body, requests=warmup, concurrency=args.concurrency))
        direct_ms, direct_s = asyncio.run(drive(*direct, body, requests=args.requests, concurrency=args.concurrency))
        gateway_ms, gateway_s = asyncio.run(drive(*gateway, body, requests=args.requests, concurrency=args.concurrency))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)

    print(
        f"requests={args.requests} concurrency={args.concurrency} upstream latency={args.latency_ms:g} ms "
        f"gateway workers={args.workers} api={args.api} cpus={os.cpu_count()}"
    )
    print(f"{'':<10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'req/s':>10}")
    for name, values, seconds in (("direct", direct_ms, direct_s), ("gateway", gateway_ms, gateway_s)):
        print(
            f"{name:<10}{percentile(values, 0.5):>10.2f}{percentile(values, 0.95):>10.2f}"
            f"{percentile(values, 0.99):>10.2f}{statistics.fmean(values):>10.2f}{len(values) / seconds:>10.0f}"
        )
    added = [percentile(gateway_ms, q) - percentile(direct_ms, q) for q in (0.5, 0.95, 0.99)]
    print(f"{'added':<10}{added[0]:>10.2f}{added[1]:>10.2f}{added[2]:>10.2f}")


def ensure_database(database_url: str) -> None:
    """Create the bench database on a local Postgres when it is missing."""
    if not database_url.startswith("postgres"):
        return
    name = database_url.rsplit("/", 1)[-1]
    exists = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        capture_output=True,
        text=True,
    )
    if exists.stdout.strip() != "1":
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True)


def migrated_django(database_url: str) -> None:
    """Django set up on the bench database `database_url`, created when missing and migrated."""
    ensure_database(database_url)
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--no-input", "-v", "0")


if __name__ == "__main__":
    main()
