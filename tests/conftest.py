import asyncio
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from billing.ledger.stream import STREAM_KEY, ledger_stream_client, ledger_stream_run, ledger_streaming
from core.redis import async_redis, sync_redis
from llmops.mock_upstream import MockUpstream
from routing.models import Model
from routing.services import tenant_model_access_set
from tenants.models import ApiKey, Team, Tenant
from tenants.services import api_key_create
from tests.background import background_start_wanted, background_stop, background_want
from tests.factories import ModelFactory, ProviderFactory, TeamFactory, TenantFactory
from tests.flush import flush_by_delete
from tests.servers import Receiver, ServiceProcess, ThreadedServer, committed_database_url, free_port, serving

# Threads of this process (the in-process gateway, the drainer thread, tests' own) may end holding a connection, which
# a pool would never get back: the suite's process runs without one (DB_POOL_MAX_SIZE=0's mode). The processes tests
# start (spawn, tests/e2e) use the pool, as production does.
settings.DATABASES["default"].get("OPTIONS", {}).pop("pool", None)


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") and "tests.worker_env" not in sys.modules:
        raise pytest.UsageError(
            "pytest-xdist workers would share the test Redis databases: add -p tests.worker_env (make test does)"
        )


def pytest_collection_finish(session):
    """Databases of the modules' own that the selected tests will need are migrated beside the tests that run first,
    from when the suite's test database is made (tests/background.py)."""
    from tests.batch.sqlite_site import sqlite_migrated
    from tests.e2e.conftest import e2e_possible, migrated_database

    if session.config.option.collectonly:
        return
    modules = {item.module.__name__ for item in session.items if getattr(item, "module", None) is not None}
    if "tests.e2e.test_topology" in modules and e2e_possible():
        background_want("e2e-database", migrated_database)
    if "tests.batch.test_sqlite" in modules:
        background_want("sqlite-migrated", sqlite_migrated)


def pytest_sessionfinish(session):
    background_stop()


@pytest.fixture
def migrated(transactional_db):
    """Migrates the test database to the given migrations (the latest without) and returns their historical models;
    after the test, back to the latest: a test left on an old schema would break every test after it."""

    def migrate(targets=None):
        # A fresh executor each time: its loader reads which migrations are applied now.
        executor = MigrationExecutor(connection)
        targets = targets or executor.loader.graph.leaf_nodes()
        executor.migrate(targets)
        return executor.loader.project_state(targets).apps

    yield migrate
    migrate()


def hourly_spikes(anomaly_model, *, tenant_id: int, count: int) -> list:
    """``count`` spend spikes of the tenant, an hour apart from 1 December 2026, made with ``anomaly_model`` (the
    historical model a migration test is given by ``migrated``)."""
    window_end = datetime(2026, 12, 1, tzinfo=UTC)
    return anomaly_model.objects.bulk_create(
        anomaly_model(
            tenant_id=tenant_id,
            metric="spend",
            window="hour",
            window_end=window_end + timedelta(hours=hours),
            observed=10,
            baseline_median=1,
            baseline_mad=1,
            score=9,
            direction="spike",
        )
        for hours in range(count)
    )


SMALL_PRICES = (Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))
LARGE_PRICES = (Decimal("2.50"), Decimal("1.25"), Decimal("10.00"))


@pytest.fixture(scope="session")
def mock_upstream():
    yield from serving(MockUpstream())


class LedgerDrainer:
    """A real ledger drainer (billing.ledger.stream) on a thread, when the ledger is streamed through Redis.

    The stream's length is the backlog, so "drained" means every appended record is a committed row.
    Work that records usage outside the live gateway (batches, jobs) calls ``wait_drained()`` before it
    reads the ledger.

    It does not linger after a batch that did not fill up, as the production drainer does to gather the next
    one: tests mostly send one request after another, and each would wait out the linger before its answer
    completes (about 45 ms a request, measured).
    """

    def __init__(self):
        self.streaming = ledger_streaming()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def _run(self, stop: threading.Event) -> None:
        ledger_stream_run(
            client=ledger_stream_client(), consumer="test-drainer", stop=stop, block_ms=100, linger_seconds=0
        )
        connection.close()

    def start(self) -> None:
        if self.streaming:
            self.stop_event = threading.Event()
            self.thread = threading.Thread(
                target=self._run, args=(self.stop_event,), name="ledger-drainer", daemon=True
            )
            self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None and self.thread.is_alive():
            self.thread.join(timeout=5)

    @contextmanager
    def paused(self):
        """For tests that play the drainer themselves and must see the stream as they left it."""
        running = self.thread is not None and self.thread.is_alive()
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()

    def wait_drained(self, timeout: float = 10.0) -> None:
        client = sync_redis()
        deadline = time.monotonic() + timeout
        while self.streaming and client.xlen(STREAM_KEY):
            if time.monotonic() > deadline:
                raise AssertionError(f"the ledger stream still holds {client.xlen(STREAM_KEY)} records")
            time.sleep(0.005)

    async def wait_drained_async(self, timeout: float = 10.0) -> None:
        client = async_redis()
        deadline = time.monotonic() + timeout
        while self.streaming and await client.xlen(STREAM_KEY):
            if time.monotonic() > deadline:
                raise AssertionError("the ledger stream was not drained in time")
            await asyncio.sleep(0.002)


@pytest.fixture(scope="session")
def ledger_drainer():
    drainer = LedgerDrainer()
    drainer.start()
    yield drainer
    drainer.stop()


def completing_after_the_ledger(app, drainer: LedgerDrainer):
    """The live gateway for tests: each body chunk waits until the ledger records appended so far are rows
    (a stream records at `[DONE]`, which SSE clients stop at), so a test that has its answer can read the
    ledger at once, as it could when the row was written inline."""

    async def application(scope, receive, send):
        async def send_when_drained(message):
            if message["type"] == "http.response.body":
                await drainer.wait_drained_async()
            await send(message)

        await app(scope, receive, send_when_drained)

    return application


@pytest.fixture
def eager_celery():
    """Celery as llmops/settings.py configures it without a broker (the embedded default): tasks run in the caller,
    and their errors reach it."""
    from llmops.celery import app

    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


@pytest.fixture(scope="session")
def gateway_server(django_db_setup, django_db_blocker, ledger_drainer):
    from llmops.asgi import application

    with ThreadedServer(completing_after_the_ledger(application, ledger_drainer)) as server:
        yield server
    with django_db_blocker.unblock():
        _close_other_connections()


def _close_other_connections() -> None:
    """The server's worker threads hold connections to the test database; drop them so it can be destroyed."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Commits on the test database return before their WAL reaches the disk, as on the e2e topology's: the suite
    kills processes, never Postgres, so no committed row is lost, and thousands of commits skip an fsync each."""
    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            name = connection.ops.quote_name(connection.settings_dict["NAME"])
            cursor.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
            cursor.execute("SET synchronous_commit = off")
    background_start_wanted()


@pytest.fixture(scope="session", autouse=True)
def transactional_tests_end_by_delete():
    """Each test on committed data ends with every table empty, as after Django's flush, by DELETE rather than
    TRUNCATE: milliseconds rather than most of a second (tests/flush.py)."""
    with flush_by_delete():
        yield


@pytest.fixture(autouse=True)
def clean_redis():
    """Each test starts with an empty Redis database (circuit breakers, counters, cache), as it does with Postgres."""
    client = sync_redis()
    if client is not None:
        client.flushdb()


@pytest.fixture
def gateway(gateway_server, transactional_db):
    """The live gateway over loopback HTTP, with data committed where its threads can see it."""
    yield gateway_server


@dataclass
class TenantSetup:
    tenant: Tenant
    team: Team
    api_key: ApiKey
    key: str
    small: Model
    large: Model


def make_tenant_setup(upstream_url: str, *, slug: str) -> TenantSetup:
    provider = ProviderFactory(name=f"mock-for-{slug}", base_url=f"{upstream_url}/v1")
    small = ModelFactory(
        name=f"{slug}-small",
        provider=provider,
        upstream_name="mock-small",
        input_price_per_million=SMALL_PRICES[0],
        cached_input_price_per_million=SMALL_PRICES[1],
        output_price_per_million=SMALL_PRICES[2],
    )
    large = ModelFactory(
        name=f"{slug}-large",
        provider=provider,
        upstream_name="mock-large",
        input_price_per_million=LARGE_PRICES[0],
        cached_input_price_per_million=LARGE_PRICES[1],
        output_price_per_million=LARGE_PRICES[2],
    )
    tenant = TenantFactory(slug=slug)
    team = TeamFactory(tenant=tenant, slug="support")
    tenant_model_access_set(tenant=tenant, allowed_models=[small, large], default_model=small)
    api_key, key = api_key_create(team=team, name=f"{slug} key")
    return TenantSetup(tenant=tenant, team=team, api_key=api_key, key=key, small=small, large=large)


@pytest.fixture
def acme(gateway, mock_upstream) -> TenantSetup:
    return make_tenant_setup(mock_upstream.url, slug="acme")


@pytest.fixture
def globex(gateway, mock_upstream) -> TenantSetup:
    return make_tenant_setup(mock_upstream.url, slug="globex")


@pytest.fixture
def openai_client(gateway, acme):
    from openai import OpenAI

    with OpenAI(base_url=f"{gateway.url}/v1", api_key=acme.key, max_retries=0, timeout=20) as client:
        yield client


def committed_process_env() -> dict[str, str]:
    """The environment of a process on the committed test database and the test Redis, the ledger streamed."""
    if not settings.REDIS_URL:
        pytest.skip("the durable ledger stream needs REDIS_URL")
    return {
        **os.environ,
        "DATABASE_URL": committed_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "LLMOPS_LEDGER_MODE": "stream",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "llmops.settings",
    }


@pytest.fixture
def process_env(transactional_db) -> dict[str, str]:
    return committed_process_env()


def gateway_process(env: dict[str, str], port: int, *, workers: int = 1) -> ServiceProcess:
    """uvicorn serving the gateway, one process or `workers` of them, as production runs it (not started yet)."""
    args = [sys.executable, "-m", "uvicorn", "llmops.asgi:application", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workers", str(workers), "--no-access-log", "--no-proxy-headers"]
    args += ["--log-level", "warning"]
    return ServiceProcess(args, env, health_url=f"http://127.0.0.1:{port}/healthz")


def drainer_process(env: dict[str, str], consumer: str) -> ServiceProcess:
    """`manage.py ledger_drain` as `consumer` (not started yet)."""
    args = [sys.executable, "manage.py", "ledger_drain", "--consumer", consumer, "--claim-idle-seconds", "1"]
    # As deployed (it polls an empty stream), but every 20 ms: a test waiting for the ledger waits less.
    args += ["--poll-ms", "20"]
    return ServiceProcess(args, env)


@pytest.fixture
def spawn(process_env):
    """Start gateway (uvicorn, one process or `workers` of them) and drainer processes; all are stopped after the test.

    They run against the committed test database and the test Redis, as production runs: for tests of what holds
    across processes (kill -9, a change seen by every worker)."""
    started: list[ServiceProcess] = []

    def gateway(port: int, *, workers: int = 1) -> ServiceProcess:
        started.append(gateway_process(process_env, port, workers=workers))
        return started[-1]

    def drainer(consumer: str) -> ServiceProcess:
        started.append(drainer_process(process_env, consumer))
        return started[-1]

    yield gateway, drainer
    for service in started:
        service.stop()


@pytest.fixture
def gateway_port() -> int:
    return free_port()


@pytest.fixture
def receiver():
    """An HTTP endpoint on loopback (tests.servers.Receiver); ``receiver.app.received`` is what it was sent."""
    yield from serving(Receiver())
