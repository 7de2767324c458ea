"""Pieces of a /v1 request's CPU, timed on their own (docs/performance.md, "One Redis connection per loop"): an idle
Redis round trip through ``core.redis.redis_command`` (the shared connection) against redis-py's own call, hiredis's
command packer against redis-py's, a provider URL parsed against one copied from ``provider_url``'s cache, and the
answer check's one-scan prefilter against the secret rules run one by one. Figures, not a test.

    REDIS_URL=redis://127.0.0.1:6379/11 .venv/bin/python bench/hot_path_parts.py --round-trips 300
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

import django
import hiredis
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/11")
django.setup()

import redis.asyncio as aioredis  # noqa: E402
from django.conf import settings  # noqa: E402

from core.redaction import SECRET_PREFILTER, SECRET_RULES  # noqa: E402
from core.redis import redis_command  # noqa: E402

# A reservation's script call, as billing.budgets.reservations sends it.
RESERVE_ARGS = (
    "EVALSHA",
    "a" * 40,
    3,
    "budget:1:spent",
    "budget:1:held",
    "budget:1:limit",
    "0.0004521",
    1733350000,
    "req",
)
# A short answer, as the mock upstream gives.
ANSWER = "This is a mock answer about the refund of ticket 1234, which will be processed in 5 business days. " * 2


def microseconds(function, number: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


async def round_trips(count: int) -> tuple[float, float]:
    """p50 µs of an idle PING, through redis_command and through redis-py's client, 5 ms apart."""
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        times = {"shared": [], "redis-py": []}
        for _ in range(count):
            for name, call in (("shared", lambda: redis_command(client, "PING")), ("redis-py", client.ping)):
                started = time.perf_counter()
                await call()
                times[name].append((time.perf_counter() - started) * 1e6)
                await asyncio.sleep(0.005)
        return statistics.median(times["shared"]), statistics.median(times["redis-py"])
    finally:
        await client.aclose()


def rules_one_by_one(text: str) -> list:
    return [rule.pattern.search(text) for rule in SECRET_RULES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=300)
    args = parser.parse_args()

    shared, redis_py = uvloop.run(round_trips(args.round_trips))
    print(f"idle Redis round trip, p50: redis_command {shared:.0f} µs, redis-py {redis_py:.0f} µs")
    connection = aioredis.Connection()
    hiredis_us = microseconds(lambda: hiredis.pack_command(RESERVE_ARGS), 100_000)
    redis_py_us = microseconds(lambda: connection.pack_command(*RESERVE_ARGS), 100_000)
    print(f"packing a reservation's EVALSHA: hiredis {hiredis_us:.2f} µs, redis-py {redis_py_us:.2f} µs")
    url = "http://127.0.0.1:9191/v1/chat/completions"
    parsed = httpx.URL(url)
    parse_us = microseconds(lambda: httpx.URL(url), 20_000)
    copy_us = microseconds(lambda: httpx.URL(parsed), 20_000)
    print(f"a provider URL: parsed {parse_us:.2f} µs, copied from the cache {copy_us:.2f} µs")
    prefilter_us = microseconds(lambda: SECRET_PREFILTER.search(ANSWER), 5_000)
    rules_us = microseconds(lambda: rules_one_by_one(ANSWER), 5_000)
    print(
        f"answer check on {len(ANSWER)} characters: prefilter {prefilter_us:.1f} µs, rules one by one {rules_us:.1f} µs"
    )


if __name__ == "__main__":
    main()
