"""What one tenant's huge prompts cost another tenant's small requests.

Starts, as separate processes on loopback, two mock upstreams (``--latency-ms``; the noisy tenants get their own, as
another provider would be, so the mock's own token counting of their prompts does not hold up the quiet tenant's
answers), the gateway the way production runs it (uvicorn, one worker per core, Postgres, Redis, the ledger streamed
and drained by ``ledger_drain``) and three tenants: `fair-quiet` sends small requests at ``--quiet-concurrency``
throughout; `fair-capped` (the default routing policy, prompts over 32,000 tokens refused) sends prompts of
``--huge-mb`` that this refuses; `fair-uncapped` (no routing policy, so no cap) sends prompts of ``--large-mb`` that
go all the way upstream. Each phase runs ``--seconds``: the quiet tenant alone, then beside each noisy tenant. Prints
the quiet tenant's latency percentiles per phase and what the noisy tenant got. Figures, not a test.

    .venv/bin/python bench/fairness.py --redis-url redis://127.0.0.1:6379/11
"""

import argparse
import asyncio
import logging
import os
import random
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import bench_process_env
from overhead import database_url_argument, ensure_database, percentile, refuse_busy_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CPUS = os.cpu_count() or 1
WORDS = ["refund", "policy", "invoice", "the", "customer", "asked", "late", "café", "日本語", "1234", "ok"]


def setup_tenants(database_url: str, quiet_upstream: str, noisy_upstream: str) -> dict[str, tuple[str, str]]:
    """The three tenants, each with its own model; returns tenant slug -> (key, model name)."""
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.core.management import call_command

    from routing.models import Model, Provider, RoutingPolicy
    from routing.services import model_create, provider_create, routing_policy_create_default, tenant_model_access_set
    from tenants.selectors import tenant_by_slug
    from tenants.services import api_key_create, tenant_create

    call_command("migrate", verbosity=0)
    providers = {}
    for name, url in (("fair-mock", quiet_upstream), ("fair-noisy-mock", noisy_upstream)):
        provider = Provider.objects.filter(name=name).first() or provider_create(name=name, base_url=url)
        if provider.base_url != url:
            provider.base_url = url
            provider.save()
        providers[name] = provider
    keys = {}
    for slug in ("fair-quiet", "fair-capped", "fair-uncapped"):
        provider = providers["fair-mock" if slug == "fair-quiet" else "fair-noisy-mock"]
        tenant = tenant_by_slug(slug=slug) or tenant_create(slug=slug, team_slugs=["load"])
        name = f"{slug}-small"
        model = Model.objects.filter(name=name).first() or model_create(
            name=name,
            provider=provider,
            upstream_name="mock-small",
            input_price_per_million=Decimal("0.15"),
            cached_input_price_per_million=Decimal("0.075"),
            output_price_per_million=Decimal("0.60"),
        )
        if model.provider_id != provider.pk:
            model.provider = provider
            model.save()
        tenant_model_access_set(tenant=tenant, allowed_models=[model], default_model=model)
        if slug != "fair-uncapped" and not RoutingPolicy.objects.for_tenant(tenant).exists():
            routing_policy_create_default(tenant=tenant, small_model=model, large_model=model)
        _, key = api_key_create(team=tenant.teams.get(slug="load"), name=f"fairness {secrets.token_hex(3)}")
        keys[slug] = (key, name)
    return keys


def prompt_of(megabytes: float) -> str:
    randomness = random.Random(15)
    words, size = [], 0
    while size < megabytes * 1_000_000:
        word = randomness.choice(WORDS)
        words.append(word)
        size += len(word.encode()) + 1
    return " ".join(words)


class Noisy:
    """Threads sending one prebuilt body over and over until stopped (blocking clients: the quiet tenant's event
    loop in this process is not slowed by building or sending them)."""

    def __init__(self, url: str, key: str, body: bytes, concurrency: int):
        self.url, self.key, self.body, self.concurrency = url, key, body, concurrency
        self.stop = threading.Event()
        self.statuses: Counter = Counter()
        self.latencies: list[float] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _run(self) -> None:
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.post(self.url, content=self.body, headers=headers).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                self.latencies.append((time.perf_counter() - started) * 1000)
                self.statuses[status] += 1

    def __enter__(self) -> "Noisy":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)


async def quiet_load(url: str, key: str, model: str, *, seconds: float, concurrency: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker(number: int) -> None:
            nonlocal errors
            sent = 0
            while time.monotonic() < deadline:
                sent += 1
                body = {
                    "model": model,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"Classify ticket {number}-{sent}: refund please"}],
                }
                started = time.perf_counter()
                response = await client.post(url, json=body, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        await asyncio.gather(*(worker(number) for number in range(concurrency)))
    return latencies, errors


def print_phase(name: str, latencies: list[float], errors: int, noisy: Noisy | None) -> None:
    quiet = (
        f"{name:<34}{len(latencies):>7}{percentile(latencies, 0.5):>9.1f}{percentile(latencies, 0.95):>9.1f}"
        f"{percentile(latencies, 0.99):>9.1f}{max(latencies):>9.1f}{errors:>7}"
    )
    if noisy is not None and noisy.latencies:
        statuses = ",".join(f"{status}x{count}" for status, count in sorted(noisy.statuses.items(), key=str))
        quiet += f"   noisy: {statuses} mean {statistics.fmean(noisy.latencies):.0f} ms"
    print(quiet, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the mock upstream's own latency")
    parser.add_argument("--workers", type=int, default=CPUS, help="gateway worker processes")
    parser.add_argument("--quiet-concurrency", type=int, default=4)
    parser.add_argument("--noisy-concurrency", type=int, default=2)
    parser.add_argument("--huge-mb", type=float, default=7.8, help="prompt size the capped tenant sends")
    parser.add_argument("--large-mb", type=float, default=1.0, help="prompt size the uncapped tenant sends")
    database_url_argument(parser)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--mock-port", type=int, default=9192, help="and the next port, for the noisy tenants' mock")
    parser.add_argument("--gateway-port", type=int, default=8192)
    args = parser.parse_args()

    noisy_mock_port = args.mock_port + 1
    for port in (args.mock_port, noisy_mock_port, args.gateway_port):
        refuse_busy_port(port)
    ensure_database(args.database_url)
    keys = setup_tenants(
        args.database_url, f"http://127.0.0.1:{args.mock_port}/v1", f"http://127.0.0.1:{noisy_mock_port}/v1"
    )
    env = {**bench_process_env(args.database_url, args.redis_url), "LLMOPS_CACHE_EMBEDDER": ""}
    gateway_command = [PYTHON, "-m", "uvicorn", "llmops.asgi:application", "--host", "127.0.0.1"]
    gateway_command += ["--port", str(args.gateway_port), "--workers", str(args.workers), "--no-access-log"]
    gateway_command += ["--log-level", "warning"]
    mock_command = [PYTHON, "manage.py", "mock_upstream", "--latency-ms", str(args.latency_ms), "--port"]
    processes = [
        subprocess.Popen([*mock_command, str(args.mock_port)], cwd=ROOT, env=env),
        subprocess.Popen([*mock_command, str(noisy_mock_port)], cwd=ROOT, env=env),
        subprocess.Popen(gateway_command, cwd=ROOT, env=env),
        subprocess.Popen([PYTHON, "manage.py", "ledger_drain", "--consumer", "fairness"], cwd=ROOT, env=env),
    ]
    try:
        wait_until_up(f"http://127.0.0.1:{args.mock_port}/v1/models")
        wait_until_up(f"http://127.0.0.1:{noisy_mock_port}/v1/models")
        wait_until_up(f"http://127.0.0.1:{args.gateway_port}/healthz")
        run(args, keys)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=20)


def run(args, keys: dict[str, tuple[str, str]]) -> None:
    url = f"http://127.0.0.1:{args.gateway_port}/v1/chat/completions"
    quiet_key, quiet_model = keys["fair-quiet"]
    noisy_bodies = {}
    for slug, megabytes in (("fair-capped", args.huge_mb), ("fair-uncapped", args.large_mb)):
        key, model = keys[slug]
        body = orjson.dumps(
            {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": prompt_of(megabytes)}]}
        )
        noisy_bodies[slug] = (key, body)
    print(
        f"gateway workers={args.workers}, cpus={CPUS}, upstream latency={args.latency_ms:g} ms, {args.seconds:g} s per "
        f"phase, quiet tenant at concurrency {args.quiet_concurrency}, noisy tenant at {args.noisy_concurrency}; "
        f"latencies in ms"
    )
    print(f"{'phase':<34}{'quiet n':>7}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'errors':>7}")
    asyncio.run(quiet_load(url, quiet_key, quiet_model, seconds=3, concurrency=args.quiet_concurrency))
    latencies, errors = asyncio.run(
        quiet_load(url, quiet_key, quiet_model, seconds=args.seconds, concurrency=args.quiet_concurrency)
    )
    print_phase("alone", latencies, errors, None)
    phases = (
        ("fair-capped", f"beside {args.huge_mb:g} MB prompts over the cap"),
        ("fair-uncapped", f"beside {args.large_mb:g} MB prompts, no cap"),
    )
    for slug, name in phases:
        key, body = noisy_bodies[slug]
        with Noisy(url, key, body, args.noisy_concurrency) as noisy:
            latencies, errors = asyncio.run(
                quiet_load(url, quiet_key, quiet_model, seconds=args.seconds, concurrency=args.quiet_concurrency)
            )
        print_phase(name, latencies, errors, noisy)


if __name__ == "__main__":
    main()
