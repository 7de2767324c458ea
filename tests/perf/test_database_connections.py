"""Postgres connections stay bounded under uvicorn: the admin, /api and /v1 driven concurrently against two workers
and the drainer never hold more connections than their pools allow, and none is left behind.

Django gives each admin and /api request under ASGI a thread of its own; with persistent connections (the old
CONN_MAX_AGE=60) each such thread left its connection open, and a sweep of the admin reached Postgres's limit.
"""

import asyncio
import threading

import httpx
import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.conftest import make_tenant_setup
from tests.servers import committed_database_url

WORKERS = 2
DRAINERS = 1
POOL_MAX_SIZE = 4
# Every process of the topology is bounded by its pool: a connection is borrowed per request and given back.
BOUND = (WORKERS + DRAINERS) * POOL_MAX_SIZE
APPLICATION_NAME = "llmops-connections-test"
CONCURRENCY = 24
ROUNDS = 2
REPEATS = 15
ADMIN_PAGES = [
    "/admin/",
    "/admin/billing/usagerecord/",
    "/admin/tenants/tenant/",
    "/admin/tenants/apikey/",
    "/admin/billing/budget/",
    "/admin/routing/model/",
]


@pytest.fixture
def process_env(process_env):
    # PGAPPNAME (libpq) names the topology's connections, so the count leaves out the test process's own. Requests
    # queue for the pools' few connections, longer on a loaded machine: the bound, not the wait, is tested here.
    return {
        **process_env,
        "DB_POOL_MAX_SIZE": str(POOL_MAX_SIZE),
        "DB_POOL_TIMEOUT": "30",
        "PGAPPNAME": APPLICATION_NAME,
        "LLMOPS_CACHE_EMBEDDER": "",
    }


def topology_connections(connection: psycopg.Connection) -> int:
    row = connection.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
        [APPLICATION_NAME],
    ).fetchone()
    return row[0]


class ConnectionWatch:
    """Counts the topology's connections every few milliseconds on a thread, keeping the highest count seen in two
    samples in a row: a backend whose client has closed its connection takes a moment to leave pg_stat_activity, and
    the pool may already have opened the connection replacing it (one whole-suite run saw 13 for one sample)."""

    def __init__(self):
        self.highest = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(committed_database_url(), autocommit=True) as connection:
            previous = 0
            while not self.stop.is_set():
                count = topology_connections(connection)
                self.highest = max(self.highest, min(count, previous))
                previous = count
                self.stop.wait(0.01)

    def __enter__(self) -> "ConnectionWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def site_paths(tenant_slug: str) -> list[str]:
    api = [
        f"/api/usage/?tenant={tenant_slug}&since=2026-01-01&until=2026-01-31",
        f"/api/usage/?tenant={tenant_slug}&since=2026-01-01&until=2026-01-31&group_by=model",
        f"/api/budgets/?tenant={tenant_slug}",
    ]
    return ADMIN_PAGES + api


async def sweep(url: str, session_cookie: str, key: str, model: str, paths: list[str]) -> list[int]:
    """Each path several times and a /v1 completion between them, CONCURRENCY requests in flight at once."""
    semaphore = asyncio.Semaphore(CONCURRENCY)
    body = {"model": model, "messages": [{"role": "user", "content": "Summarise the refund policy"}]}

    async def one(client: httpx.AsyncClient, path: str) -> int:
        async with semaphore:
            if path == "/v1":
                response = await client.post("/v1/chat/completions", json=body, headers={"authorization": key})
            else:
                response = await client.get(path)
            return response.status_code

    plan = [path for _ in range(REPEATS) for path in [*paths, "/v1"]]
    limits = httpx.Limits(max_connections=CONCURRENCY)
    cookies = {"sessionid": session_cookie}
    async with httpx.AsyncClient(base_url=url, cookies=cookies, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(one(client, path) for path in plan))


def test_admin_api_and_v1_traffic_hold_no_more_connections_than_the_pools(spawn, gateway_port, mock_upstream):
    setup = make_tenant_setup(mock_upstream.url, slug="pooled")
    admin = get_user_model().objects.create_superuser("pool-admin", "pool-admin@example.com", "not-used-here")
    browser = Client()
    browser.force_login(admin)
    start_gateway, start_drainer = spawn
    start_drainer("connections-drainer").start()
    url = start_gateway(gateway_port, workers=WORKERS).start().health_url.removesuffix("/healthz")
    paths = site_paths(setup.tenant.slug)

    statuses = []
    with ConnectionWatch() as watch:
        for _ in range(ROUNDS):
            statuses += asyncio.run(
                sweep(url, browser.cookies["sessionid"].value, f"Bearer {setup.key}", setup.small.name, paths)
            )
    with psycopg.connect(committed_database_url(), autocommit=True) as connection:
        after = topology_connections(connection)

    assert len(statuses) >= 300
    assert set(statuses) == {200}, sorted(set(statuses))
    assert 0 < watch.highest <= BOUND, f"{watch.highest} connections at once; the pools allow {BOUND}"
    assert after <= BOUND, f"{after} connections left open after the traffic; the pools allow {BOUND}"
