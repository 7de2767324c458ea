"""Throughput and added latency of the gateway, every feature on, optionally side by side with LiteLLM's proxy and
Portkey's open-source gateway.

Starts, as separate processes on loopback: the mock upstream (``--latency-ms``), the gateway the way production
runs it (uvicorn, one worker per core, Postgres, Redis, the ledger streamed and drained by ``ledger_drain``),
and with ``--vs-litellm`` LiteLLM's proxy (its own virtualenv, ``litellm[proxy]==LITELLM_VERSION``) in front of
the same mock, and with ``--vs-portkey`` Portkey's gateway (``@portkey-ai/gateway@PORTKEY_VERSION`` installed with
npm into var/portkey, one Node process as it ships; the mock is named in its ``x-portkey-provider`` and
``x-portkey-custom-host`` headers). wrk drives each scenario at each concurrency, first straight at the mock, then
through each gateway; "added" is the gateway's percentile minus the mock's in the same run. A cache scenario's
row ends with the share of its answers whose ``x-llmops-cache`` was the scenario's own (the semantic hits are sent
with ``no-store``, so a rewording the cache misses stays a miss rather than becoming an exact hit). The peers do no key
store authentication, budgets or ledger; they answer the plain-miss scenario only. Figures, not a test.

    .venv/bin/python bench/gateway_bench.py --vs-litellm --vs-portkey

Needs wrk (Debian: ``apt-get install -y wrk``), a local Postgres and Redis (``make services``), and for
``--vs-portkey`` Node.js and npm.
"""

import argparse
import concurrent.futures
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import database_url_argument, ensure_database, refuse_busy_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The interpreter this virtualenv was made from: LiteLLM's gets the same, so neither Python runs on a faster build.
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_chat.lua"
LITELLM_VERSION = "1.77.7"
LITELLM_VENV = ROOT / "var" / "litellm-venv"
LITELLM_KEY = "sk-bench-litellm"
PORTKEY_VERSION = "1.15.2"
PORTKEY_DIR = ROOT / "var" / "portkey"
CPUS = os.cpu_count() or 1


@dataclass
class Scenario:
    name: str
    mode: str
    expected_cache: str = "miss"


SCENARIOS = [
    Scenario("miss, all features", "unique"),
    Scenario("miss, cache on", "unique-cached"),
    Scenario("exact cache hit", "same", "hit-exact"),
    Scenario("semantic cache hit", "paraphrase", "hit-semantic"),
    Scenario("streaming miss", "stream"),
]


@dataclass
class Measured:
    requests: int
    seconds: float
    p50: float
    p95: float
    p99: float
    errors: int
    # Responses of a cache scenario whose x-llmops-cache was the scenario's own (a miss, an exact or a semantic hit),
    # and the rest; both 0 in the other scenarios.
    as_expected: int = 0
    otherwise: int = 0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def wrk(
    url: str, *, model: str, mode: str, key: str, concurrency: int, seconds: float, portkey_upstream: str = ""
) -> Measured:
    threads = min(CPUS, concurrency)
    command = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds:g}s", "--timeout", "30s"]
    command += ["-s", str(WRK_SCRIPT), url, "--", model, mode, key, uuid.uuid4().hex[:8]]
    if portkey_upstream:
        command.append(portkey_upstream)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    return Measured(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50=data["p50"] / 1000,
        p95=data["p95"] / 1000,
        p99=data["p99"] / 1000,
        errors=data["socket_errors"] + data["non2xx"],
        as_expected=data["as_expected"],
        otherwise=data["otherwise"],
    )


def probe(gateway_url: str, direct_url: str, key: str, pairs: int) -> tuple[float, float, float]:
    """Sequential pairs of one request, the gateway then the mock: the added p50 and how much of it the gateway spent
    in its pipeline, by its own `x-llmops-overhead-ms` (the pipeline's time minus the upstream call, which it counts
    in whole milliseconds, so the figure runs up to 1 ms high). Returns (added p50, pipeline p50, direct p50)."""
    through, direct, pipeline = [], [], []
    with httpx.Client(timeout=30) as client:
        for i in range(pairs):
            content = f"probe {uuid.uuid4().hex} {i}"
            body = {
                "model": "auto",
                "max_tokens": 64,
                "temperature": 0,
                "messages": [{"role": "user", "content": content}],
            }
            headers = {"authorization": f"Bearer {key}", "x-llmops-cache": "bypass, no-store"}
            started = time.perf_counter()
            response = client.post(gateway_url, json=body, headers=headers)
            through.append((time.perf_counter() - started) * 1000)
            pipeline.append(float(response.headers["x-llmops-overhead-ms"]))
            started = time.perf_counter()
            client.post(direct_url, json={**body, "model": "mock-small"}, headers={"authorization": "Bearer mock"})
            direct.append((time.perf_counter() - started) * 1000)
    return (
        statistics.median(through) - statistics.median(direct),
        statistics.median(pipeline),
        statistics.median(direct),
    )


def print_probe(label: str, measured: tuple[float, float, float]) -> None:
    added, pipeline, direct = measured
    print(f"probe {label}: added p50 {added:.2f} ms, of it in the pipeline {pipeline:.2f} ms (direct p50 {direct:.2f})")


def bench_process_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The environment of the processes a bench starts: the bench database and Redis, the ledger streamed, quiet
    logs, and the shared tiktoken encodings when they are there."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LLMOPS_LEDGER_MODE": "stream",
        "LOG_LEVEL": "WARNING",
        "SERVE_STATIC": "false",
    }
    shared_tiktoken = ROOT.parent / "shared" / "tiktoken"
    if shared_tiktoken.is_dir():
        env.setdefault("TIKTOKEN_CACHE_DIR", str(shared_tiktoken))
    return env


def setup_bench_tenant(database_url: str, redis_url: str, upstream_url: str) -> str:
    """A tenant with every feature on the path: a live routing policy (`auto`), a budget and a rate limit in
    scope. Returns a fresh key. Creates the database when it is missing."""
    ensure_database(database_url)
    os.environ["DATABASE_URL"] = database_url
    # The gateway's Redis too, so the purge below also deletes the cache's Redis copies of an earlier run's entries.
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from billing.budgets.services import budget_create
    from billing.models import Budget, RateLimit
    from billing.ratelimits import rate_limit_create
    from routing.cache.store import cache_entries_purge
    from routing.models import Model, Provider, RoutingPolicy
    from routing.policy.drafts import policy_draft_replace
    from routing.services import (
        DEMO_CACHE_TTL_SECONDS,
        default_policy_document,
        model_create,
        provider_create,
        routing_policy_ensure_default,
        routing_policy_publish,
        tenant_model_access_set,
    )
    from tenants.selectors import tenant_by_slug
    from tenants.services import api_key_create, tenant_create

    call_command("migrate", verbosity=0)
    tenant = tenant_by_slug(slug="bench-full") or tenant_create(slug="bench-full", team_slugs=["load"])
    team = tenant.teams.get(slug="load")
    provider = Provider.objects.filter(name="bench-full-mock").first() or provider_create(
        name="bench-full-mock", base_url=upstream_url
    )
    if provider.base_url != upstream_url:
        provider.base_url = upstream_url
        provider.save()
    prices = {
        "bench-full-small": ("mock-small", "0.15", "0.075", "0.60"),
        "bench-full-large": ("mock-large", "2.50", "1.25", "10.00"),
    }
    models = []
    for name, (upstream_name, input_price, cached_price, output_price) in prices.items():
        models.append(
            Model.objects.filter(name=name).first()
            or model_create(
                name=name,
                provider=provider,
                upstream_name=upstream_name,
                input_price_per_million=Decimal(input_price),
                cached_input_price_per_million=Decimal(cached_price),
                output_price_per_million=Decimal(output_price),
            )
        )
    tenant_model_access_set(tenant=tenant, allowed_models=models, default_model=models[0])
    policy = routing_policy_ensure_default(tenant=tenant) or RoutingPolicy.objects.for_tenant(tenant).get()
    # An older bench database keeps its policy: bring it to today's template (caching included).
    template = default_policy_document(
        small_model=models[0].name, large_model=models[-1].name, cache_ttl_seconds=DEMO_CACHE_TTL_SECONDS
    )
    if policy.live_version.document != template:
        policy_draft_replace(policy=policy, document=template)
        routing_policy_publish(policy=policy, actor=None)
    if not Budget.objects.for_tenant(tenant).exists():
        budget_create(tenant=tenant, limit_usd=Decimal("1000000"))
    if not RateLimit.objects.for_tenant(tenant).exists():
        rate_limit_create(tenant=tenant, team=team, requests_per_minute=100_000_000)
    # Every run starts with an empty cache, so its cache scenarios measure the same index size.
    cache_entries_purge(tenant=tenant)
    _, key = api_key_create(team=team, name=f"bench {secrets.token_hex(3)}")
    return key


def worker_pids(master_pid: int) -> list[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def rss_mb(pids: list[int]) -> list[float]:
    sizes = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) / 1024)
    return sizes


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far (/proc/<pid>/stat, fields 14 and 15)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def database_backends(database_url: str) -> list[int]:
    """The server processes of the bench database's connections (the gateway's pools and the drainer's)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]


def database_cpu_seconds(pids: list[int]) -> float:
    """CPU time of those backends still alive (a backend that exits during a run drops out of the sum)."""
    alive = [pid for pid in pids if Path(f"/proc/{pid}/stat").exists()]
    try:
        return cpu_seconds(alive)
    except FileNotFoundError:
        return 0.0


def cache_table_maintain(database_url: str) -> None:
    """What autovacuum does for production as the cache table changes: its dead rows vacuumed and its statistics
    current, so the planner picks the HNSW index over reading a whole context. This machine's Postgres runs with
    autovacuum off (its conf.d sets it for CI), so the bench does it after each warm-up."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE routing_cacheentry")


def cache_status(url: str, key: str, model: str, mode: str) -> str:
    """What the gateway answers for the scenario's prompt after it has seen it (or a rewording) once."""
    prompts = {
        "same": ["Summarise the refund policy for late orders"] * 2,
        "paraphrase": ["What is the refund policy for late orders?", "Explain the refund policy for late orders"],
    }[mode]
    status = ""
    for prompt in prompts:
        # The first answer is written after it is sent; the second request may reach the other worker.
        time.sleep(0.5)
        body = {"model": model, "max_tokens": 64, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
        response = httpx.post(url, json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)
        status = response.headers.get("x-llmops-cache", "")
    return status


def _venv_base(venv: Path) -> Path | None:
    """The interpreter a virtualenv was made from (``executable`` in its pyvenv.cfg)."""
    config = venv / "pyvenv.cfg"
    lines = config.read_text().splitlines() if config.exists() else []
    found = [line.partition("=")[2].strip() for line in lines if line.partition("=")[0].strip() == "executable"]
    return Path(found[0]).resolve() if found else None


def start_litellm(*, port: int, upstream_url: str, workers: int) -> subprocess.Popen:
    if not (LITELLM_VENV / "bin" / "litellm").exists() or _venv_base(LITELLM_VENV) != BASE_PYTHON.resolve():
        subprocess.run([str(BASE_PYTHON), "-m", "venv", "--clear", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    config = LITELLM_VENV.parent / "litellm-bench.yaml"
    # No database: LiteLLM then keeps no spend log or per-key usage (its Postgres needs Prisma engines fetched at
    # run time); auth is its master key. Our side writes every request to the ledger.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "bench-small",
                        "litellm_params": {"model": "openai/mock-small", "api_base": upstream_url, "api_key": "mock"},
                    }
                ],
                "general_settings": {"master_key": LITELLM_KEY},
                "litellm_settings": {"set_verbose": False, "json_logs": True, "drop_params": True},
            }
        )
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update({"LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION", "NO_DOCS": "True"})
    command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--num_workers", str(workers)]
    return subprocess.Popen(command, cwd=LITELLM_VENV.parent, env=env, stdout=subprocess.DEVNULL)


def start_portkey(*, port: int) -> subprocess.Popen:
    server = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not server.exists():
        npm = ["npm", "install", "--prefix", str(PORTKEY_DIR), "--no-audit", "--no-fund"]
        subprocess.run([*npm, f"@portkey-ai/gateway@{PORTKEY_VERSION}"], check=True)
    env = {**os.environ, "NODE_ENV": "production"}
    command = ["node", str(server), f"--port={port}", "--headless"]
    return subprocess.Popen(command, cwd=PORTKEY_DIR, env=env, stdout=subprocess.DEVNULL)


def print_row(
    name: str,
    concurrency: int,
    target: str,
    result: Measured,
    direct: Measured | None,
    cpu_ms: float | None = None,
    db_cpu_ms: float | None = None,
) -> None:
    added = (
        ""
        if direct is None
        else (f"{result.p50 - direct.p50:>9.2f}{result.p95 - direct.p95:>9.2f}{result.p99 - direct.p99:>9.2f}")
    )
    cpu = "" if cpu_ms is None else f"{cpu_ms:>9.2f}" + ("" if db_cpu_ms is None else f"{db_cpu_ms:>9.2f}")
    answered = result.as_expected + result.otherwise
    as_expected = f"  as expected {result.as_expected / answered:.1%}" if answered else ""
    print(
        f"{name:<22}{concurrency:>5} {target:<9}{result.throughput:>9.0f}{result.p50:>9.2f}{result.p95:>9.2f}"
        f"{result.p99:>9.2f}{added}{cpu}{as_expected}{'' if not result.errors else f'  errors={result.errors}'}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the mock upstream's own latency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=15.0, help="per measured run")
    parser.add_argument("--workers", type=int, default=CPUS, help="gateway (and LiteLLM) worker processes")
    parser.add_argument("--scenarios", nargs="+", default=[scenario.mode for scenario in SCENARIOS])
    parser.add_argument("--sustained-requests", type=int, default=100_000, help="0 skips the memory run")
    parser.add_argument(
        "--probe",
        type=int,
        default=0,
        metavar="PAIRS",
        help="in the plain miss, before and during each measured run of ours: PAIRS sequential requests (the gateway, "
        "then the mock) splitting the added p50 into the pipeline's part (x-llmops-overhead-ms) and the rest; the "
        "run's own rows then carry the probe's load too",
    )
    parser.add_argument("--vs-litellm", action="store_true")
    parser.add_argument("--vs-portkey", action="store_true")
    database_url_argument(parser)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--mock-port", type=int, default=9191)
    parser.add_argument("--gateway-port", type=int, default=8191)
    parser.add_argument("--litellm-port", type=int, default=4191)
    parser.add_argument("--portkey-port", type=int, default=8787)
    args = parser.parse_args()

    peer_ports = [args.litellm_port] * args.vs_litellm + [args.portkey_port] * args.vs_portkey
    for port in (args.mock_port, args.gateway_port, *peer_ports):
        refuse_busy_port(port)
    upstream_url = f"http://127.0.0.1:{args.mock_port}/v1"
    key = setup_bench_tenant(args.database_url, args.redis_url, upstream_url)
    env = bench_process_env(args.database_url, args.redis_url)
    mock_command = [PYTHON, "manage.py", "mock_upstream", "--port", str(args.mock_port)]
    gateway_command = [PYTHON, "-m", "uvicorn", "llmops.asgi:application", "--host", "127.0.0.1"]
    gateway_command += ["--port", str(args.gateway_port), "--workers", str(args.workers), "--no-access-log"]
    # As the Procfile runs it: the app decides which forwarded address to believe (llmops/client_ip.py).
    gateway_command += ["--log-level", "warning", "--no-proxy-headers"]
    processes = [
        subprocess.Popen([*mock_command, "--latency-ms", str(args.latency_ms)], cwd=ROOT, env=env),
        subprocess.Popen(gateway_command, cwd=ROOT, env=env),
        subprocess.Popen([PYTHON, "manage.py", "ledger_drain", "--consumer", "bench"], cwd=ROOT, env=env),
    ]
    peers: dict[str, subprocess.Popen] = {}
    if args.vs_litellm:
        peers["litellm"] = start_litellm(port=args.litellm_port, upstream_url=upstream_url, workers=args.workers)
    if args.vs_portkey:
        peers["portkey"] = start_portkey(port=args.portkey_port)
    processes += peers.values()
    try:
        wait_until_up(f"http://127.0.0.1:{args.mock_port}/v1/models")
        wait_until_up(f"http://127.0.0.1:{args.gateway_port}/healthz")
        if args.vs_litellm:
            wait_until_up(f"http://127.0.0.1:{args.litellm_port}/health/liveliness", timeout=120)
        if args.vs_portkey:
            wait_until_up(f"http://127.0.0.1:{args.portkey_port}/", timeout=60)
        peer_pids = {name: [process.pid, *worker_pids(process.pid)] for name, process in peers.items()}
        run(args, key, processes[1].pid, upstream_url, peer_pids)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=20)


def run(args, key: str, gateway_pid: int, upstream_url: str, peer_pids: dict[str, list[int]]) -> None:
    direct_url = f"http://127.0.0.1:{args.mock_port}/v1/chat/completions"
    gateway_url = f"http://127.0.0.1:{args.gateway_port}/v1/chat/completions"
    litellm_url = f"http://127.0.0.1:{args.litellm_port}/v1/chat/completions"
    portkey_url = f"http://127.0.0.1:{args.portkey_port}/v1/chat/completions"
    warmup = 3.0
    print(
        f"upstream latency={args.latency_ms:g} ms, gateway workers={args.workers}, cpus={CPUS}, "
        f"{args.seconds:g} s per run, wrk on the same cores; latencies in ms; added = minus direct in the same run; "
        "cpu = the gateway's (or peer's) CPU ms per request, which other load on the machine leaves about the same; "
        "db cpu = the same for the Postgres backends of the bench database"
    )
    print(
        f"{'scenario':<22}{'conc':>5} {'target':<9}{'req/s':>9}{'p50':>9}{'p95':>9}{'p99':>9}"
        f"{'+p50':>9}{'+p95':>9}{'+p99':>9}{'cpu':>9}{'db cpu':>9}"
    )
    gateway_workers = worker_pids(gateway_pid)
    # (peer, concurrency) → (direct, llmops, peer) of the plain-miss scenario
    peer_results: dict[tuple[str, int], tuple[Measured, Measured, Measured]] = {}
    for scenario in (scenario for scenario in SCENARIOS if scenario.mode in args.scenarios):
        if scenario.expected_cache != "miss":
            status = cache_status(gateway_url, key, "auto", scenario.mode)
            if status != scenario.expected_cache:
                print(f"{scenario.name:<22} pending: the gateway answered x-llmops-cache={status or 'none'}")
                continue
        for concurrency in args.concurrency:
            mock_mode = "stream" if scenario.mode == "stream" else "unique"
            wrk(direct_url, model="mock-small", mode=mock_mode, key="mock", concurrency=concurrency, seconds=warmup)
            direct = wrk(
                direct_url,
                model="mock-small",
                mode=mock_mode,
                key="mock",
                concurrency=concurrency,
                seconds=args.seconds,
            )
            print_row(scenario.name, concurrency, "direct", direct, None)
            wrk(gateway_url, model="auto", mode=scenario.mode, key=key, concurrency=concurrency, seconds=warmup)
            cache_table_maintain(args.database_url)
            backends = database_backends(args.database_url)
            probing = args.probe and scenario.mode == "unique"
            if probing:
                print_probe("with the gateway idle", probe(gateway_url, direct_url, key, args.probe))
                during = concurrent.futures.ThreadPoolExecutor(1).submit(
                    probe, gateway_url, direct_url, key, args.probe
                )
            cpu_before, db_cpu_before = cpu_seconds(gateway_workers), database_cpu_seconds(backends)
            ours = wrk(
                gateway_url, model="auto", mode=scenario.mode, key=key, concurrency=concurrency, seconds=args.seconds
            )
            cpu_ms = (cpu_seconds(gateway_workers) - cpu_before) * 1000 / max(ours.requests, 1)
            db_cpu_ms = (database_cpu_seconds(backends) - db_cpu_before) * 1000 / max(ours.requests, 1)
            print_row(scenario.name, concurrency, "llmops", ours, direct, cpu_ms, db_cpu_ms)
            if probing:
                print_probe(f"beside the run at concurrency {concurrency} (one more connection)", during.result())
            if args.vs_litellm and scenario.mode == "unique":
                common = {"model": "bench-small", "mode": "unique", "key": LITELLM_KEY, "concurrency": concurrency}
                wrk(litellm_url, **common, seconds=warmup)
                cpu_before = cpu_seconds(peer_pids["litellm"])
                theirs = wrk(litellm_url, **common, seconds=args.seconds)
                cpu_ms = (cpu_seconds(peer_pids["litellm"]) - cpu_before) * 1000 / max(theirs.requests, 1)
                print_row(scenario.name, concurrency, "litellm", theirs, direct, cpu_ms)
                peer_results[(f"LiteLLM {LITELLM_VERSION}", concurrency)] = (direct, ours, theirs)
            if args.vs_portkey and scenario.mode == "unique":
                common = {"model": "mock-small", "mode": "unique", "key": "mock", "concurrency": concurrency}
                wrk(portkey_url, **common, seconds=warmup, portkey_upstream=upstream_url)
                cpu_before = cpu_seconds(peer_pids["portkey"])
                theirs = wrk(portkey_url, **common, seconds=args.seconds, portkey_upstream=upstream_url)
                cpu_ms = (cpu_seconds(peer_pids["portkey"]) - cpu_before) * 1000 / max(theirs.requests, 1)
                print_row(scenario.name, concurrency, "portkey", theirs, direct, cpu_ms)
                peer_results[(f"Portkey {PORTKEY_VERSION}", concurrency)] = (direct, ours, theirs)
    for (peer, concurrency), (direct, ours, theirs) in sorted(peer_results.items()):
        added_ours, added_theirs = ours.p50 - direct.p50, theirs.p50 - direct.p50
        print(
            f"vs {peer} at concurrency {concurrency}: throughput x{ours.throughput / theirs.throughput:.2f}"
            f", added p50 {added_ours:.2f} ms vs {added_theirs:.2f} ms (ratio {added_ours / added_theirs:.2f})"
            f", added p99 {ours.p99 - direct.p99:.2f} ms vs {theirs.p99 - direct.p99:.2f} ms"
        )
    if args.sustained_requests:
        sustained(args, key, gateway_pid, gateway_url)


def sustained(args, key: str, gateway_pid: int, gateway_url: str) -> None:
    """RSS of the gateway's workers before and after at least ``--sustained-requests`` cache-miss requests."""
    pids = worker_pids(gateway_pid)
    before = rss_mb(pids)
    print(f"memory: worker RSS MB before {', '.join(f'{size:.1f}' for size in before)}", flush=True)
    done = 0
    started = time.monotonic()
    while done < args.sustained_requests:
        result = wrk(gateway_url, model="auto", mode="unique", key=key, concurrency=32, seconds=20)
        done += result.requests
    minutes = (time.monotonic() - started) / 60
    after = rss_mb(pids)
    print(
        f"memory: {done} requests in {minutes:.1f} min; worker RSS MB after "
        f"{', '.join(f'{size:.1f}' for size in after)} (before {', '.join(f'{size:.1f}' for size in before)})"
    )


if __name__ == "__main__":
    main()
