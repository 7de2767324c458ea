"""Redis restarted mid-traffic, with AOF as production runs it, on the production shape (two uvicorn workers and the
drainer, Postgres): no 500, no HTML, a ledger row for every request that passed authentication, no spend past the
budget, and no reservation left behind.

The Redis is the test's own (a free port, AOF in a temporary directory); the restart is SHUTDOWN (which writes the
AOF out) and a start on the same directory, while requests are in flight upstream and arriving.
"""

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from decimal import Decimal
from io import StringIO
from pathlib import Path

import httpx
import pytest
import redis
from django.core.management import call_command
from django.db.models import Sum
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.retry import Retry

from billing.budgets.services import budget_counter_check
from billing.ledger.stream import STREAM_KEY, ledger_stream_client
from billing.models import Budget, UsageRecord
from core.redis import redis_persistence_problem
from llmops.mock_upstream import MockUpstream
from tests.conftest import make_tenant_setup
from tests.servers import ServiceProcess, ThreadedServer, free_port

# Slow enough upstream that requests are in flight when Redis goes away and settle while it is away or after.
UPSTREAM_LATENCY_MS = 150
CONCURRENCY = 8
ANSWERS_BEFORE_RESTART = 24
MAX_TOKENS = 16
# The budget holds about this many requests at their actual cost, so it runs out after the restart.
REQUESTS_IN_BUDGET = 60
MOST_REQUESTS = 400
REFUSALS_TO_STOP = 8
# More than what the budget has left once the traffic stops: without a counter rebuilt from the ledger, they would
# all pass.
AFTER_LOSS_REQUESTS = 6
MESSAGES = [{"role": "user", "content": "Classify this support ticket: my refund has not arrived."}]


class AofRedis:
    """A redis-server of the test's own, persisting with AOF the way production's must."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(directory)]
        args += ["--logfile", str(directory / "redis.log")]
        self.service = ServiceProcess(args, {})
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.service.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client.ping():
                    return
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "redis-server did not come up"
            time.sleep(0.01)

    def restart(self, *, keep_data: bool = True) -> None:
        """SHUTDOWN (the AOF is written out), then a new server on the same directory; without `keep_data` the AOF
        is deleted in between, as if Redis had run without persistence."""
        redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0)).shutdown()
        self.service.process.wait(timeout=10)
        if not keep_data:
            shutil.rmtree(self.directory / "appendonlydir")
        self.start()


@pytest.fixture
def aof_redis(tmp_path):
    server = AofRedis(tmp_path)
    server.start()
    yield server
    server.service.stop()


@pytest.fixture
def slow_upstream():
    with ThreadedServer(MockUpstream(latency_ms=UPSTREAM_LATENCY_MS)) as server:
        yield server


@pytest.fixture
def process_env(process_env, aof_redis):
    return {**process_env, "REDIS_URL": aof_redis.url, "LLMOPS_CACHE_EMBEDDER": ""}


@dataclass
class Traffic:
    answers: list[httpx.Response] = field(default_factory=list)
    restarted_after: int | None = None


async def drive(url: str, key: str, model: str, redis_server: AofRedis) -> Traffic:
    """CONCURRENCY clients send chat completions; after ANSWERS_BEFORE_RESTART answers Redis restarts (on a thread,
    while they go on); they stop once the budget has refused REFUSALS_TO_STOP requests after the restart."""
    traffic = Traffic()
    attempts = iter(range(MOST_REQUESTS))
    body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    restart: asyncio.Task | None = None

    def refused_since_restart() -> int:
        if traffic.restarted_after is None:
            return 0
        later = traffic.answers[traffic.restarted_after :]
        return sum(1 for answer in later if answer.status_code == 429)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal restart
        for _ in attempts:
            if refused_since_restart() >= REFUSALS_TO_STOP:
                return
            traffic.answers.append(await client.post("/v1/chat/completions", json=body))
            if restart is None and len(traffic.answers) >= ANSWERS_BEFORE_RESTART:
                traffic.restarted_after = len(traffic.answers)
                restart = asyncio.create_task(asyncio.to_thread(redis_server.restart))

    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CONCURRENCY)))
    if restart is not None:
        await restart
    return traffic


def one_request(url: str, key: str, model: str) -> tuple[str, Decimal]:
    answer = httpx.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.headers["x-llmops-request-id"], Decimal(answer.headers["x-llmops-cost-usd"])


def reserved_units(client: redis.Redis, budget_id: int) -> int:
    counters = [key for key in client.scan_iter(f"llmops:budget:{budget_id}:*") if not key.endswith(b":pending")]
    return sum(int(client.hget(key, "reserved") or 0) for key in counters)


def wait_for_no_reservation(client: redis.Redis, budget_id: int, timeout: float = 10.0) -> int:
    """The units still reserved once none is left, or when the time is up."""
    deadline = time.monotonic() + timeout
    while (reserved := reserved_units(client, budget_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return reserved


def wait_until_drained(client: redis.Redis, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.xlen(STREAM_KEY):
        assert time.monotonic() < deadline, f"{client.xlen(STREAM_KEY)} ledger records never drained"
        time.sleep(0.05)


def test_a_redis_restart_loses_no_row_overspends_nothing_leaks_no_reservation_and_rebuilds_lost_counters(
    spawn, gateway_port, aof_redis, slow_upstream, settings
):
    # This process announces the budget and reads the counters where the gateway keeps them.
    settings.REDIS_URL = aof_redis.url
    setup = make_tenant_setup(slow_upstream.url, slug="restarted")
    start_gateway, start_drainer = spawn
    start_drainer("restart-drainer").start()
    url = start_gateway(gateway_port, workers=2).start().health_url.removesuffix("/healthz")
    first_id, first_cost = one_request(url, setup.key, setup.small.name)
    limit = first_cost * REQUESTS_IN_BUDGET
    call_command(
        "budget_set", "--tenant", setup.tenant.slug, "--period", "month", "--limit-usd", f"{limit:f}",
        "--action", "block", stdout=StringIO(),
    )  # fmt: skip

    traffic = asyncio.run(drive(url, setup.key, setup.small.name, aof_redis))
    wait_until_drained(aof_redis.client)

    statuses = [answer.status_code for answer in traffic.answers]
    assert traffic.restarted_after is not None and 200 in statuses[traffic.restarted_after :], statuses
    assert set(statuses) <= {200, 429, 503}, statuses
    assert all(answer.headers["content-type"].startswith("application/json") for answer in traffic.answers)
    refusals = [answer.json()["error"]["code"] for answer in traffic.answers if answer.status_code != 200]
    assert set(refusals) <= {"budget_exceeded", "budget_unavailable"}, refusals
    # A row for every request that passed authentication (all of them), under the request id it was answered with.
    answered = {answer.headers["x-llmops-request-id"] for answer in traffic.answers}
    rows = UsageRecord.objects.unscoped().filter(tenant=setup.tenant)
    assert len(answered) == len(traffic.answers)
    assert set(rows.values_list("request_id", flat=True)) == answered | {first_id}
    budget = Budget.objects.unscoped().get(tenant=setup.tenant)
    # Settles that met Redis down are sent again once it answers: every reservation is released soon after.
    assert wait_for_no_reservation(aof_redis.client, budget.pk) == 0
    check = budget_counter_check(budget=budget, now=timezone.now())
    assert check.ledger_usd == rows.aggregate(total=Sum("cost_usd"))["total"] <= limit
    assert check.counted_usd == check.ledger_usd

    # A restart that loses what Redis held (as without AOF): the counter is rebuilt from the ledger before the next
    # request is admitted, so the budget the ledger shows spent stays spent.
    aof_redis.restart(keep_data=False)
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {setup.key}"}, timeout=30) as client:
        body = {"model": setup.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        after_loss = [client.post("/v1/chat/completions", json=body) for _ in range(AFTER_LOSS_REQUESTS)]
    wait_until_drained(aof_redis.client)

    assert {answer.status_code for answer in after_loss} <= {200, 429, 503}
    assert 429 in {answer.status_code for answer in after_loss}
    assert rows.count() == len(answered) + 1 + AFTER_LOSS_REQUESTS
    check = budget_counter_check(budget=budget, now=timezone.now())
    assert check.ledger_usd == rows.aggregate(total=Sum("cost_usd"))["total"] <= limit
    assert check.counted_usd == check.ledger_usd


def test_a_redis_without_aof_is_named_as_such_and_the_drainer_warns_at_start(db, aof_redis, ledger_drainer, caplog):
    assert redis_persistence_problem(aof_redis.client) == ""
    # The suite's own Redis runs in memory only.
    assert "runs without AOF" in redis_persistence_problem(ledger_stream_client())
    with ledger_drainer.paused(), caplog.at_level(logging.WARNING, logger="billing"):
        call_command("ledger_drain", "--once", "--consumer", "aof-check", stdout=StringIO())
    assert "Redis (REDIS_URL) runs without AOF" in caplog.text
