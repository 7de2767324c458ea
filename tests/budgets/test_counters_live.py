"""Counters start from the truth in the production topology: two uvicorn workers, the ledger drainer, Postgres and
Redis as processes. A budget created below what the period already spent blocks the very next request; a Redis
flush mid-period does not reopen a spent budget; the database counters seed the same way."""

import time
from decimal import Decimal
from io import StringIO

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone

from billing.budgets.services import budget_counter_check
from billing.ledger.stream import STREAM_KEY
from billing.models import Budget, UsageRecord
from core.redis import sync_redis
from tests.budgets.conftest import UNREACHABLE_REDIS_URL
from tests.conftest import committed_process_env, drainer_process, gateway_process, make_tenant_setup
from tests.servers import free_port

MESSAGES = [{"role": "user", "content": "Classify this support ticket: my refund has not arrived."}]
MAX_TOKENS = 20
MOST_REQUESTS = 60


@pytest.fixture
def process_env(process_env):
    return {**process_env, "LLMOPS_CACHE_EMBEDDER": ""}


def ask(url: str, setup) -> httpx.Response:
    """One request on a new connection, so the two workers share the requests."""
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {setup.key}"},
        json={"model": setup.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        timeout=20,
    )


def budget_set(setup, limit: Decimal) -> str:
    out = StringIO()
    call_command(
        "budget_set", "--tenant", setup.tenant.slug, "--period", "day", "--limit-usd", f"{limit:f}",
        "--action", "block", stdout=out,
    )  # fmt: skip
    return out.getvalue()


def spend(url: str, setup, count: int) -> Decimal:
    answers = [ask(url, setup) for _ in range(count)]
    assert [answer.status_code for answer in answers] == [200] * count, answers[-1].text
    return sum((Decimal(answer.headers["x-llmops-cost-usd"]) for answer in answers), Decimal(0))


def wait_until_drained(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sync_redis().xlen(STREAM_KEY):
        assert time.monotonic() < deadline, "the drainer did not drain the ledger stream"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def running_topology(django_db_setup) -> str:
    """Two uvicorn workers and the drainer, as production runs them, for the module's tests on the real Redis (each
    makes a tenant of its own, which no worker has loaded): starting them took some 3 s of the 2-core machine.
    Returns the gateway's URL."""
    env = {**committed_process_env(), "LLMOPS_CACHE_EMBEDDER": ""}
    port = free_port()
    drainer = drainer_process(env, "counters-drainer")
    gateway = gateway_process(env, port, workers=2)
    try:
        drainer.start()
        gateway.start()
        yield f"http://127.0.0.1:{port}"
    finally:
        gateway.stop()
        drainer.stop()


@pytest.fixture
def url(running_topology, transactional_db) -> str:
    """The module's gateway, with this test's data committed where it can see it."""
    return running_topology


def test_a_budget_set_below_the_periods_spend_blocks_the_very_next_request(url, mock_upstream):
    setup = make_tenant_setup(mock_upstream.url, slug="spent")
    spent = spend(url, setup, 6)

    # At once, with records perhaps still in the ledger stream: the backlog is spend too.
    printed = budget_set(setup, spent / 2)
    refused = [ask(url, setup) for _ in range(8)]

    assert f"spent ${spent:.10f}, reserved $0.0000000000 by requests in flight, remaining $0.0000000000" in printed
    assert [response.status_code for response in refused] == [429] * 8
    assert {response.json()["error"]["code"] for response in refused} == {"budget_exceeded"}
    assert f"is used up: ${spent:.10f} spent" in refused[0].json()["error"]["message"]


def test_a_redis_flush_mid_period_does_not_reopen_a_spent_budget(url, mock_upstream):
    setup = make_tenant_setup(mock_upstream.url, slug="flushed")
    one_request = spend(url, setup, 1)
    budget_set(setup, one_request * 5)
    statuses = []
    while 429 not in statuses and len(statuses) < MOST_REQUESTS:
        statuses.append(ask(url, setup).status_code)
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}, statuses
    wait_until_drained()  # a flush also takes the stream's backlog: that loss is not what this test is about

    sync_redis().flushdb()
    after_flush = [ask(url, setup) for _ in range(8)]

    assert [response.status_code for response in after_flush] == [429] * 8
    budget = Budget.objects.unscoped().get(tenant=setup.tenant)
    wait_until_drained()
    check = budget_counter_check(budget=budget, now=timezone.now())
    assert (
        check.counted_usd
        == check.ledger_usd
        == sum(
            UsageRecord.objects.unscoped().filter(tenant=setup.tenant).values_list("cost_usd", flat=True), Decimal(0)
        )
    )


def test_database_counters_seed_from_the_ledger_when_redis_is_down(spawn, process_env, gateway_port, mock_upstream):
    process_env.update(
        REDIS_URL=UNREACHABLE_REDIS_URL, LLMOPS_BUDGET_REDIS_FAILURE="database", LLMOPS_LEDGER_MODE="direct"
    )
    setup = make_tenant_setup(mock_upstream.url, slug="database")
    start_gateway, _ = spawn
    url = start_gateway(gateway_port, workers=2).start().health_url.removesuffix("/healthz")
    spent = spend(url, setup, 4)

    budget_set(setup, spent + spent / 8)  # room for half a request
    refused = [ask(url, setup) for _ in range(6)]

    assert [response.status_code for response in refused] == [429] * 6
    message = refused[0].json()["error"]["message"]
    assert f"${spent:.10f} spent" in message and "cannot hold this request's worst case" in message
    counter = Budget.objects.unscoped().get(tenant=setup.tenant).counters.get()
    assert (counter.spent_usd, counter.reserved_usd) == (spent, 0)
