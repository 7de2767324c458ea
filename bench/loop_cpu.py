"""The event loop's CPU per chat completion, in process: requests driven straight into ``llmops.asgi.application``
on a uvloop loop (no uvicorn, no client sockets), against the mock upstream (no latency) on loopback, with the
bench tenant and body of ``gateway_bench.py``'s "miss, all features" (every feature on, the cache bypassed),
Postgres and Redis. The loop thread's
CPU divided by the requests: steadier than a run of the whole gateway for comparing two trees, since nothing else
on the machine is counted. No drainer runs: the ledger records the requests appended to the Redis stream are
deleted from it when the run ends. ``--profile FILE`` writes cProfile's statistics of the measured pass. Figures,
not a test.

    TIKTOKEN_CACHE_DIR=../shared/tiktoken .venv/bin/python bench/loop_cpu.py --requests 6000 --concurrency 16
"""

import argparse
import asyncio
import cProfile
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_bench import setup_bench_tenant  # noqa: E402
from bench.overhead import database_url_argument, wait_until_up  # noqa: E402


def chat_scope(key: str, body: bytes) -> dict:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    headers += [(b"x-llmops-cache", b"bypass, no-store"), (b"authorization", f"Bearer {key}".encode())]
    headers += [(b"content-length", str(len(body)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def one_request(application, key: str, number: int) -> None:
    content = f"Summarise support ticket {number} about a late refund"
    message = {"role": "user", "content": content}
    body = orjson.dumps({"model": "auto", "max_tokens": 64, "temperature": 0, "messages": [message]})
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    connected = asyncio.get_running_loop().create_future()
    statuses = []

    async def receive():
        if pending:
            return pending.pop()
        return await connected

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await application(chat_scope(key, body), receive, send)
    if statuses != [200]:
        raise RuntimeError(f"request {number} answered {statuses}")


async def measure(application, key: str, *, requests: int, concurrency: int, profile: str | None) -> None:
    for measured in (False, True):
        numbers = iter(range(requests))

        async def client(numbers=numbers):
            for number in numbers:
                await one_request(application, key, number)

        profiler = cProfile.Profile() if measured and profile else None
        cpu, wall = time.thread_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        label = "measured" if measured else "warm-up "
        print(f"{label}: loop CPU {cpu / requests * 1e6:.0f} µs per request, wall {wall / requests * 1e6:.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6000, help="per pass (a warm-up pass, then the measured one)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight, as a worker at 32 has")
    parser.add_argument("--profile", help="write cProfile's statistics of the measured pass to this file")
    parser.add_argument("--mock-port", type=int, default=9391)
    database_url_argument(parser)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
    args = parser.parse_args()

    os.environ.update(LLMOPS_LEDGER_MODE="stream", LOG_LEVEL="WARNING", SERVE_STATIC="false")
    upstream_url = f"http://127.0.0.1:{args.mock_port}/v1"
    key = setup_bench_tenant(args.database_url, args.redis_url, upstream_url)
    mock_command = [sys.executable, "manage.py", "mock_upstream", "--port", str(args.mock_port), "--latency-ms", "0"]
    mock = subprocess.Popen(mock_command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_until_up(f"{upstream_url}/models")
        import uvloop

        from llmops.asgi import application
        from routing.providers.base import upstream_client_close

        async def run() -> None:
            try:
                await measure(
                    application, key, requests=args.requests, concurrency=args.concurrency, profile=args.profile
                )
            finally:
                await upstream_client_close()

        from billing.ledger.stream import STREAM_KEY
        from core.redis import sync_redis

        redis = sync_redis()
        newest_before = redis.xrevrange(STREAM_KEY, count=1)
        try:
            uvloop.run(run())
        finally:
            start = f"({newest_before[0][0].decode()}" if newest_before else "-"
            while appended := [entry for entry, _ in redis.xrange(STREAM_KEY, min=start, count=10_000)]:
                redis.xdel(STREAM_KEY, *appended)
    finally:
        mock.terminate()
        mock.wait(timeout=20)


if __name__ == "__main__":
    main()
