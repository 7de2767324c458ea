"""Latency of answers served from the response cache, through the live gateway.

Starts the mock upstream and the gateway as separate processes (bench/overhead.py's helpers), gives the bench
tenant a policy that caches, stores one answer, then drives: requests straight at the mock (the upstream's own
time), cache misses through the gateway (bypass header), exact hits (the same request), and semantic hits (a
paraphrase, sent with `no-store` so it never becomes an exact hit). A hit calls no upstream, so its whole
latency is what the gateway adds. A figure, not a test.

    .venv/bin/python bench/cache_latency.py --requests 500 --concurrency 4
"""

import argparse
import asyncio
import os
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import (
    database_url_argument,
    drive,
    ensure_database,
    percentile,
    refuse_busy_port,
    setup_bench_tenant,
    start_mock_and_gateway,
)

STORED = "What is the refund policy for annual plans?"
PARAPHRASE = "What's the refund policy on annual plans?"


def publish_caching_policy() -> None:
    from routing.models import RoutingPolicy
    from routing.policy.drafts import policy_draft_replace
    from routing.services import routing_policy_create, routing_policy_publish
    from tenants.selectors import tenant_by_slug

    tenant = tenant_by_slug(slug="bench")
    policy = RoutingPolicy.objects.for_tenant(tenant).first() or routing_policy_create(tenant=tenant)
    rule = {"priority": 10, "name": "bench-cache", "outcome": {"cache_ttl_seconds": 3600}}
    policy_draft_replace(policy=policy, document={"aliases": {}, "rules": [rule]})
    routing_policy_publish(policy=policy, actor=None)


def body(content: str) -> dict:
    return {
        "model": "bench-small",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
        "temperature": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the mock upstream's own latency")
    database_url_argument(parser)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"))
    parser.add_argument("--mock-port", type=int, default=9191)
    parser.add_argument("--gateway-port", type=int, default=8191)
    args = parser.parse_args()

    refuse_busy_port(args.mock_port)
    refuse_busy_port(args.gateway_port)
    ensure_database(args.database_url)
    os.environ["REDIS_URL"] = args.redis_url
    upstream_url = f"http://127.0.0.1:{args.mock_port}/v1"
    key = setup_bench_tenant(args.database_url, upstream_url)
    publish_caching_policy()
    env = {**os.environ, "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url, "LOG_LEVEL": "WARNING"}
    processes = start_mock_and_gateway(
        mock_port=args.mock_port, gateway_port=args.gateway_port, latency_ms=args.latency_ms, env=env
    )
    gateway_url = f"http://127.0.0.1:{args.gateway_port}/v1/chat/completions"
    auth = {"authorization": f"Bearer {key}"}
    runs = {
        "direct (mock)": (f"{upstream_url}/chat/completions", {"authorization": "Bearer mock"}, body(STORED)),
        "gateway miss": (gateway_url, {**auth, "x-llmops-cache": "bypass, no-store"}, body(STORED)),
        "exact hit": (gateway_url, auth, body(STORED)),
        "semantic hit": (gateway_url, {**auth, "x-llmops-cache": "no-store"}, body(PARAPHRASE)),
    }
    results = {}
    try:
        stored = httpx.post(gateway_url, json=body(STORED), headers=auth, timeout=60)
        for name, expected in (("exact hit", "hit-exact"), ("semantic hit", "hit-semantic")):
            url, headers, payload = runs[name]
            status = httpx.post(url, json=payload, headers=headers, timeout=60).headers.get("x-llmops-cache")
            if status != expected:
                raise SystemExit(f"{name}: the gateway answered x-llmops-cache={status} (stored: {stored.status_code})")
        for name, (url, headers, payload) in runs.items():
            asyncio.run(drive(url, headers, payload, requests=min(100, args.requests), concurrency=args.concurrency))
            results[name], _ = asyncio.run(
                drive(url, headers, payload, requests=args.requests, concurrency=args.concurrency)
            )
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)

    print(
        f"requests={args.requests} concurrency={args.concurrency} upstream latency={args.latency_ms:g} ms "
        f"cpus={os.cpu_count()}; a hit calls no upstream, so its latency is all gateway"
    )
    print(f"{'':<16}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for name, values in results.items():
        print(f"{name:<16}" + "".join(f"{percentile(values, q):>10.2f}" for q in (0.5, 0.95, 0.99)))


if __name__ == "__main__":
    main()
