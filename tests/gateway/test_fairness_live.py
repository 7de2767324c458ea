"""One tenant cannot hurt the others (issue 15): a huge prompt is refused before it costs CPU, and a tenant's requests
in flight are capped across every gateway process, each slot given back however its request ends."""

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest

from billing.budgets.services import budget_create
from billing.models import BudgetScope, UsageRecord
from core.redis import sync_redis
from llmops.gateway.concurrency import KEY_PREFIX
from llmops.mock_upstream import MockUpstream
from routing.services import routing_policy_ensure_default
from tests.conftest import make_tenant_setup
from tests.factories import ModelFactory, ProviderFactory
from tests.gateway.test_config_changes_live import TwoWorkers
from tests.servers import ThreadedServer

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def process_env(process_env):
    """No embedding model in the spawned workers: these tests do not use the semantic cache."""
    return {**process_env, "LLMOPS_CACHE_EMBEDDER": ""}


def held(tenant) -> int:
    return sync_redis().zcard(KEY_PREFIX + str(tenant.pk))


def wait_until_none_held(tenant, timeout: float = 10.0) -> None:
    """Slots go back to Redis just after the answer (it does not wait for them)."""
    deadline = time.monotonic() + timeout
    while held(tenant):
        assert time.monotonic() < deadline, f"{held(tenant)} slots still held"
        time.sleep(0.01)


def limit_inflight(setup, limit: int) -> None:
    setup.tenant.max_inflight_requests = limit
    setup.tenant.save()


def slow_stream(setup):
    model = ModelFactory(
        name=f"{setup.tenant.slug}-slow-stream", provider=setup.small.provider, upstream_name="mock-slow-stream"
    )
    setup.tenant.model_access.allowed_models.add(model)
    return model


def test_a_multi_megabyte_prompt_over_the_cap_is_refused_uncounted_with_its_ledger_row(gateway, acme):
    """4.2 MB: over the default template's ceiling (32,000 tokens, where it stops compressing) by its length alone."""
    routing_policy_ensure_default(tenant=acme.tenant)
    body = {"model": "auto", "messages": [{"role": "user", "content": "refund policy " * 300_000}]}

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {acme.key}"}, timeout=60
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "token_cap_exceeded" and "has at least" in error["message"]
    record = UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])
    assert (record.http_status, record.error_code) == (400, "token_cap_exceeded")


def test_over_its_cap_a_tenant_gets_a_429_others_are_served_and_every_slot_comes_back_however_its_request_ends(
    gateway, acme, globex
):
    limit_inflight(acme, 1)
    limit_inflight(globex, 1)
    failing = ModelFactory(name="acme-refused", provider=acme.small.provider, upstream_name="mock-fail-400")
    over_budget = ModelFactory(name="acme-over-budget", provider=acme.small.provider, upstream_name="mock-small")
    acme.tenant.model_access.allowed_models.add(failing, over_budget)
    budget_create(
        tenant=acme.tenant, scope=BudgetScope.TENANT_MODEL, model_name=over_budget.name, limit_usd=Decimal("0.000001")
    )
    ways = {
        "answered": ({"model": acme.small.name}, 200),
        "streamed": ({"model": acme.small.name, "stream": True}, 200),
        "failed upstream": ({"model": failing.name}, 400),
        "refused by its budget": ({"model": over_budget.name}, 429),
    }
    slow = {"model": slow_stream(acme).name, "stream": True, "max_tokens": 24, "messages": HELLO}
    acme_headers = {"authorization": f"Bearer {acme.key}"}
    with httpx.Client(base_url=gateway.url, headers=acme_headers, timeout=30) as client:
        for way, (fields, status) in ways.items():
            response = client.post("/v1/chat/completions", json={**fields, "max_tokens": 5, "messages": HELLO})
            assert response.status_code == status, (way, response.text)
            wait_until_none_held(acme.tenant)
        with client.stream("POST", "/v1/chat/completions", json=slow) as holding:
            lines = holding.iter_lines()  # held: a dropped iterator would close the connection
            next(lines)
            refused = client.post("/v1/chat/completions", json={"model": acme.small.name, "messages": HELLO})
            other = client.post(
                "/v1/chat/completions",
                json={"model": globex.small.name, "messages": HELLO},
                headers={"authorization": f"Bearer {globex.key}"},
            )
        wait_until_none_held(acme.tenant)  # its client went away mid-stream
        again = client.post("/v1/chat/completions", json={"model": acme.small.name, "messages": HELLO})

    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "tenant_concurrency_limit_exceeded"
    record = UsageRecord.objects.unscoped().get(request_id=refused.headers["x-llmops-request-id"])
    assert (record.http_status, record.error_code) == (429, "tenant_concurrency_limit_exceeded")
    assert (other.status_code, again.status_code) == (200, 200)


def test_the_cap_holds_across_two_gateway_workers(spawn, gateway_port, mock_upstream):
    """Four requests on each of two uvicorn workers at once, to a slow upstream, under a cap of 3: three answered in
    all, not three per worker."""
    setup = make_tenant_setup(mock_upstream.url, slug="crowded")
    limit_inflight(setup, 3)
    with ThreadedServer(MockUpstream(latency_ms=1500)) as slow_upstream:
        slow = ModelFactory(
            name="crowded-slow",
            provider=ProviderFactory(name="slow-mock", base_url=f"{slow_upstream.url}/v1"),
            upstream_name="mock-small",
        )
        setup.tenant.model_access.allowed_models.add(slow)
        start_gateway, start_drainer = spawn
        workers = TwoWorkers(gateway_port, start_gateway(gateway_port, workers=2).start().process.pid)
        start_drainer("fairness").start()
        connections = connections_on_each_worker(workers, setup, per_worker=4)
        results = at_once(connections, setup.key, slow.name)

    assert Counter(status for status, _, _ in results) == {200: 3, 429: 5}
    refusals = [(retry_after, body["error"]["code"]) for status, retry_after, body in results if status == 429]
    assert set(refusals) == {("1", "tenant_concurrency_limit_exceeded")}
    wait_until_none_held(setup.tenant)
    deadline = time.monotonic() + 10
    while UsageRecord.objects.unscoped().filter(served_model=slow.name).count() < len(results):
        assert time.monotonic() < deadline, "the ledger lacks rows of the burst"
        time.sleep(0.05)
    rows = Counter(UsageRecord.objects.unscoped().filter(served_model=slow.name).values_list("http_status", flat=True))
    assert rows == {200: 3, 429: 5}


def connections_on_each_worker(workers: TwoWorkers, setup, *, per_worker: int) -> list[http.client.HTTPConnection]:
    """Kept-alive connections, `per_worker` on each worker (opened in batches until both have enough), each having
    sent a quick request first, so both workers hold the tenant's configuration and encodings."""
    chosen: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in workers.pids}
    for _ in range(20):
        batch = [http.client.HTTPConnection("127.0.0.1", workers.port, timeout=60) for _ in range(8)]
        for connection in batch:
            connection.connect()
        for connection in batch:
            body = json.dumps({"model": setup.small.name, "max_tokens": 5, "messages": HELLO})
            headers = {"authorization": f"Bearer {setup.key}", "content-type": "application/json"}
            connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
            assert connection.getresponse().read()
            mine = chosen[workers.worker_of(connection.sock.getsockname()[1])]
            if len(mine) < per_worker:
                mine.append(connection)
            else:
                connection.close()
        if all(len(connections) == per_worker for connections in chosen.values()):
            return [connection for connections in chosen.values() for connection in connections]
    raise AssertionError(f"connections per worker: { {pid: len(c) for pid, c in chosen.items()} }")


def at_once(connections: list[http.client.HTTPConnection], key: str, model: str) -> list[tuple[int, str, dict]]:
    ready = threading.Barrier(len(connections))
    body = json.dumps({"model": model, "max_tokens": 5, "messages": HELLO})
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    def send(connection: http.client.HTTPConnection) -> tuple[int, str, dict]:
        ready.wait()
        connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        return response.status, response.getheader("retry-after"), answer

    with ThreadPoolExecutor(max_workers=len(connections)) as pool:
        return list(pool.map(send, connections))
