"""A committed configuration change applies to the next request on every gateway process, at any size.

Real processes: uvicorn with two workers and the ledger drainer against the committed test database and the test
Redis, the mock upstream over loopback. Which worker served a request is read from the kernel (the worker process
holding the server side of the client's connection), so "every worker" is shown, not assumed.
"""

import asyncio
import http.client
import json
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.db.models import Sum

from billing.budgets.services import budget_create, budget_delete, budget_update
from billing.models import UsageRecord
from llmops.gateway.snapshot import tenant_slice_build
from routing.models import TenantModelAccess
from tenants.keys import generate_key
from tenants.models import ApiKey, Team, Tenant
from tenants.services import api_key_create, api_key_revoke
from tests.conftest import SMALL_PRICES, committed_process_env, drainer_process, gateway_process, make_tenant_setup
from tests.factories import ModelFactory, ProviderFactory
from tests.gateway.test_budgets_live import MAX_TOKENS, MESSAGES, fire, worst_case
from tests.servers import free_port

WORKERS = 2
BODY = {"messages": MESSAGES, "max_tokens": MAX_TOKENS}


class TwoWorkers:
    def __init__(self, port: int, master_pid: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.pids = _worker_pids(master_pid)
        assert len(self.pids) == WORKERS, self.pids

    def requests_on_new_connections(self, key: str, model: str, count: int) -> list[tuple[int, int]]:
        """`count` requests, each on its own new connection (opened together, so both workers accept some):
        (HTTP status, pid of the worker that answered)."""
        connections = [http.client.HTTPConnection("127.0.0.1", self.port, timeout=30) for _ in range(count)]
        try:
            for connection in connections:
                connection.connect()
            answers = []
            for connection in connections:
                body = json.dumps({**BODY, "model": model})
                headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
                connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                answers.append((response.status, self.worker_of(connection.sock.getsockname()[1])))
            return answers
        finally:
            for connection in connections:
                connection.close()

    def served_by_both(self, key: str, model: str, *, status: int, rounds: int = 20) -> list[tuple[int, int]]:
        """Requests on new connections until each worker has answered one; every answer must have `status`."""
        answers: list[tuple[int, int]] = []
        for _ in range(rounds):
            answers += self.requests_on_new_connections(key, model, 8)
            if {pid for _, pid in answers} == set(self.pids):
                break
        assert {pid for _, pid in answers} == set(self.pids), f"one worker answered everything: {answers}"
        assert [code for code, _ in answers] == [status] * len(answers), answers
        return answers

    def worker_of(self, client_port: int) -> int:
        """The worker holding the server side of the connection from `client_port` (Linux /proc)."""
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if local_port == self.port and remote_port == client_port:
                inode = fields[9]
        assert inode is not None, f"no server socket for client port {client_port}"
        for pid in self.pids:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        raise AssertionError(f"no worker holds socket {inode}")


def _worker_pids(master_pid: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing children; not its resource tracker)."""
    deadline = time.monotonic() + 30
    while True:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        pids = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        if len(pids) == WORKERS or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


@pytest.fixture(scope="module")
def running_workers(django_db_setup) -> TwoWorkers:
    """One gateway of two workers and one drainer for the module's tests, as production's processes outlive any one
    change: starting them took some 3 s of the 2-core machine per test. Each test still starts on an empty database
    and Redis and makes tenants of its own, which no worker has loaded. No embedding model: these tests do not use
    the semantic cache."""
    env = {**committed_process_env(), "LLMOPS_CACHE_EMBEDDER": ""}
    port = free_port()
    gateway = gateway_process(env, port, workers=WORKERS)
    drainer = drainer_process(env, "config-changes")
    try:
        gateway.start()
        drainer.start()
        yield TwoWorkers(port, gateway.process.pid)
    finally:
        gateway.stop()
        drainer.stop()


@pytest.fixture
def two_workers(running_workers, transactional_db) -> TwoWorkers:
    """The module's workers, with this test's data committed where they can see it."""
    return running_workers


def test_a_key_revoked_while_both_workers_are_idle_is_refused_on_every_request_of_the_next_burst(
    two_workers, mock_upstream
):
    setup = make_tenant_setup(mock_upstream.url, slug="revoked")
    two_workers.served_by_both(setup.key, setup.small.name, status=200)

    api_key_revoke(api_key=setup.api_key)
    time.sleep(1.5)  # both workers idle
    results = asyncio.run(fire(two_workers, setup.key, setup.small.name, 100))

    assert Counter(status for status, _, _ in results) == {401: 100}
    assert all('"invalid_api_key"' in text and "revoked" in text for _, _, text in results)
    two_workers.served_by_both(setup.key, setup.small.name, status=401)


def test_a_brand_new_key_works_on_every_request_of_its_first_burst(two_workers, mock_upstream):
    setup = make_tenant_setup(mock_upstream.url, slug="newkey")
    two_workers.served_by_both(setup.key, setup.small.name, status=200)

    _, new_key = api_key_create(team=setup.team, name="created mid-flight")
    results = asyncio.run(fire(two_workers, new_key, setup.small.name, 100))

    assert Counter(status for status, _, _ in results) == {200: 100}
    two_workers.served_by_both(new_key, setup.small.name, status=200)


def test_a_deleted_budget_is_no_longer_enforced_on_the_next_request(two_workers, mock_upstream):
    setup = make_tenant_setup(mock_upstream.url, slug="unbudgeted")
    budget = budget_create(tenant=setup.tenant, period="day", limit_usd=Decimal("0.000001"))
    refused = two_workers.served_by_both(setup.key, setup.small.name, status=429)

    budget_delete(budget=budget)
    answered = two_workers.served_by_both(setup.key, setup.small.name, status=200)

    assert len(refused) >= WORKERS and len(answered) >= WORKERS


def test_a_budget_lowered_right_before_200_concurrent_requests_is_not_overshot(two_workers, mock_upstream):
    """Both workers have served the key under the budget; it is lowered, and the next traffic is the burst."""
    setup = make_tenant_setup(mock_upstream.url, slug="lowered")
    budget = budget_create(tenant=setup.tenant, scope="key", api_key=setup.api_key, period="day", limit_usd=Decimal(1))
    warm_up = two_workers.served_by_both(setup.key, setup.small.name, status=200)
    spent_before = _ledger_spend(setup.tenant, rows=len(warm_up))
    limit = spent_before + worst_case(SMALL_PRICES) * 50

    budget_update(budget=budget, limit_usd=limit)
    results = asyncio.run(fire(two_workers, setup.key, setup.small.name, 200))

    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) == {200, 429}, statuses
    assert all('"budget_exceeded"' in text for status, _, text in results if status == 429)
    assert 40 <= statuses[200] <= 50, statuses
    assert _ledger_spend(setup.tenant, rows=len(warm_up) + statuses[200]) <= limit


def _ledger_spend(tenant: Tenant, *, rows: int, timeout: float = 30.0) -> Decimal:
    """The tenant's spend in the ledger once its `rows` answered requests are there."""
    deadline = time.monotonic() + timeout
    while UsageRecord.objects.unscoped().filter(tenant=tenant, http_status=200).count() < rows:
        assert time.monotonic() < deadline, "the ledger rows of the answered requests never arrived"
        time.sleep(0.05)
    return UsageRecord.objects.unscoped().filter(tenant=tenant).aggregate(total=Sum("cost_usd"))["total"]


TENANTS = 1_000
KEYS_PER_TENANT = 10
MEASURED_TENANTS = 20


def _bulk_installation(upstream_url: str) -> tuple[dict[int, str], str]:
    """TENANTS tenants with a team, KEYS_PER_TENANT keys each and access to one shared model, inserted in bulk.
    Returns one full key per tenant id, and the model's name."""
    model = ModelFactory(name="shared-small", provider=ProviderFactory(name="shared", base_url=f"{upstream_url}/v1"))
    tenants = Tenant.objects.bulk_create(Tenant(slug=f"bulk-{n}", name=f"bulk {n}") for n in range(TENANTS))
    teams = Team.objects.bulk_create(Team(tenant=tenant, slug="main", name="main") for tenant in tenants)
    accesses = TenantModelAccess.objects.bulk_create(
        TenantModelAccess(tenant=tenant, default_model=model) for tenant in tenants
    )
    TenantModelAccess.allowed_models.through.objects.bulk_create(
        TenantModelAccess.allowed_models.through(tenantmodelaccess_id=access.pk, model_id=model.pk)
        for access in accesses
    )
    keys, full_keys = [], {}
    for team in teams:
        for n in range(KEYS_PER_TENANT):
            full_key, prefix, secret_hash = generate_key()
            keys.append(ApiKey(tenant_id=team.tenant_id, team=team, prefix=prefix, secret_hash=secret_hash))
            if n == 0:
                full_keys[team.tenant_id] = full_key
    ApiKey.objects.bulk_create(keys, batch_size=2_000)
    return full_keys, model.name


async def _latencies_ms(url: str, keys: list[str], model: str, *, rounds: int) -> list[float]:
    """Each key sends `rounds` requests, 8 at a time overall; the latency of each as the client saw it."""
    latencies: list[float] = []
    queue = [key for _ in range(rounds) for key in keys]
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=8)) as client:

        async def worker():
            while queue:
                key = queue.pop()
                started = time.perf_counter()
                response = await client.post(
                    "/v1/chat/completions", json={**BODY, "model": model}, headers={"authorization": f"Bearer {key}"}
                )
                latencies.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(worker() for _ in range(8)))
    return latencies


def _percentiles(latencies: list[float]) -> str:
    cuts = statistics.quantiles(latencies, n=100)
    return f"p50 {cuts[49]:.1f} ms, p95 {cuts[94]:.1f} ms, max {max(latencies):.1f} ms ({len(latencies)} requests)"


def test_at_1000_tenants_a_revoked_key_is_refused_on_its_next_request_on_every_worker(two_workers, mock_upstream):
    full_keys, model = _bulk_installation(mock_upstream.url)
    assert ApiKey.objects.unscoped().count() == TENANTS * KEYS_PER_TENANT
    victim_tenant, *others = sorted(full_keys)
    victim_key = full_keys[victim_tenant]
    other_keys = [full_keys[tenant_id] for tenant_id in others[:MEASURED_TENANTS]]
    two_workers.served_by_both(victim_key, model, status=200)
    for key in other_keys:
        two_workers.served_by_both(key, model, status=200)
    usual = asyncio.run(_latencies_ms(two_workers.url, other_keys, model, rounds=10))

    api_key_revoke(api_key=ApiKey.objects.unscoped().get(tenant_id=victim_tenant, prefix=victim_key.split("-")[1]))
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The revoked key's next requests and the other tenants' traffic, both right after the change.
        refusals = pool.submit(two_workers.served_by_both, victim_key, model, status=401)
        after = asyncio.run(_latencies_ms(two_workers.url, other_keys, model, rounds=10))
        refused = refusals.result()

    started = time.perf_counter()
    tenant_slice_build(tenant_id=victim_tenant, version=None)
    load_ms = (time.perf_counter() - started) * 1000
    print(f"\none tenant's configuration loads in {load_ms:.1f} ms at {TENANTS} tenants")
    print(f"other tenants before the revocation: {_percentiles(usual)}")
    print(f"other tenants right after it:         {_percentiles(after)}")
    print(f"revoked key, first requests on new connections: {refused[:4]}")
