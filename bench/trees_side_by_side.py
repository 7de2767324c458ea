"""Two trees of the gateway measured at the same moment: this checkout and ``--other`` (another checkout or worktree,
run with this checkout's virtualenv unless ``--other-python`` names another interpreter), each its own uvicorn on its
own port, in front of one mock upstream, one Postgres database, one Redis and one ledger drainer, with the bench
tenant of ``gateway_bench.py`` ("miss, all features": every feature on, the cache bypassed).

On a machine whose speed drifts between runs, two runs one after the other differ by more than a small change does;
here both trees see the same machine at once:

- ``--pairs N``: N sequential requests to each, alternated (this, other, this, …), with the gateway idle: the added
  latency of one request and the part of it in the pipeline (``x-llmops-overhead-ms``), and the median of the
  paired differences;
- ``--concurrency C``: wrk at concurrency C against both at once, ``--rounds`` times: each tree's throughput,
  latency percentiles and CPU per request under the same load.

Figures, not a test. Both trees must share this checkout's migrations (the database is migrated from here).

    git worktree add --detach ../before HEAD~1
    TIKTOKEN_CACHE_DIR=../shared/tiktoken .venv/bin/python bench/trees_side_by_side.py --other ../before
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_bench import (  # noqa: E402
    PYTHON,
    Measured,
    bench_process_env,
    cpu_seconds,
    setup_bench_tenant,
    worker_pids,
    wrk,
)
from bench.overhead import database_url_argument, ensure_database, refuse_busy_port, wait_until_up  # noqa: E402

BENCH_MODEL = "auto"
BENCH_MODE = "unique"


def paired(urls: dict[str, str], key: str, pairs: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per tree: the latency of each request and its ``x-llmops-overhead-ms``, requests alternated between trees."""
    measured = {name: ([], []) for name in urls}
    headers = {"authorization": f"Bearer {key}", "x-llmops-cache": "bypass, no-store"}
    with httpx.Client(timeout=30) as client:
        for i in range(pairs):
            for name, url in urls.items() if i % 2 == 0 else reversed(urls.items()):
                body = {
                    "model": BENCH_MODEL,
                    "max_tokens": 64,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"pair {uuid.uuid4().hex} {i}"}],
                }
                started = time.perf_counter()
                response = client.post(url, json=body, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                measured[name][0].append(elapsed)
                measured[name][1].append(float(response.headers["x-llmops-overhead-ms"]))
    return measured


def print_paired(measured: dict[str, tuple[list[float], list[float]]]) -> None:
    (this, (this_total, this_pipeline)), (other, (other_total, other_pipeline)) = measured.items()
    for name, (total, pipeline) in measured.items():
        total_p50, pipeline_p50 = statistics.median(total), statistics.median(pipeline)
        print(f"idle, sequential: {name:<6} p50 {total_p50:.2f} ms, pipeline p50 {pipeline_p50:.2f} ms")
    total_difference = statistics.median(a - b for a, b in zip(this_total, other_total, strict=True))
    pipeline_difference = statistics.median(a - b for a, b in zip(this_pipeline, other_pipeline, strict=True))
    print(
        f"idle, sequential: {this} minus {other}, median of the paired differences: {total_difference:+.3f} ms in "
        f"all, {pipeline_difference:+.3f} ms in the pipeline"
    )


def loaded(
    urls: dict[str, str], pids: dict[str, list[int]], key: str, concurrency: int, seconds: float, label: str
) -> None:
    """wrk against both trees at once; each row as gateway_bench prints it, with the tree's CPU per request."""
    results: dict[str, Measured] = {}
    cpu_before = {name: cpu_seconds(tree_pids) for name, tree_pids in pids.items()}

    def drive(name: str) -> None:
        results[name] = wrk(
            urls[name], model=BENCH_MODEL, mode=BENCH_MODE, key=key, concurrency=concurrency, seconds=seconds
        )

    threads = [threading.Thread(target=drive, args=(name,)) for name in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, result in results.items():
        cpu_ms = (cpu_seconds(pids[name]) - cpu_before[name]) * 1000 / max(result.requests, 1)
        print(
            f"{label}, concurrency {concurrency:>3}: {name:<6} {result.throughput:7.0f} req/s  p50 {result.p50:6.2f}  "
            f"p95 {result.p95:6.2f}  p99 {result.p99:6.2f} ms  cpu {cpu_ms:.2f} ms/request  errors {result.errors}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="the other checkout")
    parser.add_argument(
        "--other-python",
        default=PYTHON,
        help="the other tree's interpreter (its virtualenv's python); default: this one",
    )
    parser.add_argument("--pairs", type=int, default=1000, help="sequential requests to each tree; 0 skips")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[4, 16], help="per tree, wrk against both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per tree")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the mock upstream's own latency")
    database_url_argument(parser)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--mock-port", type=int, default=9194)
    parser.add_argument("--ports", type=int, nargs=2, default=[8194, 8195], help="this tree's, the other's")
    args = parser.parse_args()

    for port in (args.mock_port, *args.ports):
        refuse_busy_port(port)
    ensure_database(args.database_url)
    upstream_url = f"http://127.0.0.1:{args.mock_port}/v1"
    key = setup_bench_tenant(args.database_url, args.redis_url, upstream_url)
    env = bench_process_env(args.database_url, args.redis_url)
    trees = {"this": ROOT, "other": args.other.resolve()}
    processes = [
        subprocess.Popen(
            [PYTHON, "manage.py", "mock_upstream", "--port", str(args.mock_port), "--latency-ms", str(args.latency_ms)],
            cwd=ROOT,
            env=env,
        ),
        subprocess.Popen([PYTHON, "manage.py", "ledger_drain", "--consumer", "bench"], cwd=ROOT, env=env),
    ]
    gateways = {}
    # A relative path is the caller's: Popen would look for it under the other tree (its cwd). Not resolved, which
    # would follow a virtualenv's python symlink to the base interpreter and leave the virtualenv's packages out.
    pythons = {"this": PYTHON, "other": os.path.abspath(args.other_python)}
    for (name, tree), port in zip(trees.items(), args.ports, strict=True):
        command = [pythons[name], "-m", "uvicorn", "llmops.asgi:application"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", str(args.workers), "--no-access-log", "--log-level", "warning", "--no-proxy-headers"]
        gateways[name] = subprocess.Popen(command, cwd=tree, env=env)
    processes += gateways.values()
    try:
        wait_until_up(f"http://127.0.0.1:{args.mock_port}/v1/models")
        for port in args.ports:
            wait_until_up(f"http://127.0.0.1:{port}/healthz")
        urls = {
            name: f"http://127.0.0.1:{port}/v1/chat/completions" for name, port in zip(trees, args.ports, strict=True)
        }
        pids = {name: [process.pid, *worker_pids(process.pid)] for name, process in gateways.items()}
        print(
            f"this: {trees['this']} ({PYTHON}), other: {trees['other']} ({pythons['other']}); "
            f"{args.workers} worker(s) each, upstream latency "
            f"{args.latency_ms:g} ms, cpus {os.cpu_count()}, latencies in ms"
        )
        # Warm both (the tenant's configuration, connections, the tokenizer) before anything is measured.
        paired(urls, key, 50)
        if args.pairs:
            print_paired(paired(urls, key, args.pairs))
        for round_number in range(args.rounds):
            for concurrency in args.concurrency:
                loaded(urls, pids, key, concurrency, args.seconds, f"round {round_number + 1}")
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    main()
