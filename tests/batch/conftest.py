"""A live Celery worker process on the test broker and database, slow and fast mock upstreams, webhook receivers."""

import io
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal

import orjson
import pytest
from django.conf import settings

from llmops.mock_upstream import MockUpstream
from tests.conftest import TenantSetup
from tests.factories import ModelFactory, ProviderFactory
from tests.servers import ServiceProcess, committed_database_url, serving

DELEGATING_PROVIDER = "mock-batch-endpoint"
WORKER_ENV = {
    "LLMOPS_BATCH_LEASE_SECONDS": "2",
    "LLMOPS_BATCH_POLL_SECONDS": "0.5",
    "LLMOPS_BATCH_TENANT_CONCURRENCY": "2",
    "LLMOPS_BATCH_DELEGATE_PROVIDERS": DELEGATING_PROVIDER,
    "LLMOPS_JOBS_WEBHOOK_MAX_ATTEMPTS": "2",
}


def celery_worker_process(env: dict[str, str], *, concurrency: int | None = None) -> ServiceProcess:
    """``celery -A llmops worker`` as a child process, on the queues the Procfile's worker consumes: one solo process,
    or a prefork pool of ``concurrency``."""
    pool = ["--pool=solo"] if concurrency is None else ["--pool=prefork", f"--concurrency={concurrency}"]
    args = [sys.executable, "-m", "celery", "-A", "llmops", "worker", "-Q", "celery,shadow", *pool, "--without-gossip"]
    args += ["--without-mingle", "--without-heartbeat", "-l", "warning"]
    return ServiceProcess(args, env)


def celery_worker() -> ServiceProcess:
    """A worker on the test database, with the test Redis as broker."""
    env = {
        **os.environ,
        **WORKER_ENV,
        "DATABASE_URL": committed_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
    }
    return celery_worker_process(env)


@pytest.fixture
def live_broker(settings):
    """The gateway in this process enqueues to the Redis broker the worker reads, never runs tasks eagerly."""
    from llmops.celery import app

    assert settings.REDIS_URL, "these tests need TEST_REDIS_URL"
    previous = app.conf.broker_url, app.conf.task_always_eager
    app.conf.broker_url, app.conf.task_always_eager = settings.REDIS_URL, False
    yield app
    app.conf.broker_url, app.conf.task_always_eager = previous


@pytest.fixture
def files_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def worker(gateway, live_broker, files_root):
    running = celery_worker().start()
    yield running
    # Killed, not stopped: a warm shutdown first finishes the task in hand and then tears the interpreter down (1.5
    # to 2.5 s measured), for a test that is over; the next test starts on an empty broker and database anyway.
    running.kill()


@pytest.fixture(scope="session")
def slow_upstream():
    """Every completion takes 250 ms, so a batch is still running when a test cancels it or kills its worker."""
    yield from serving(MockUpstream(latency_ms=250))


def provider_model(
    upstream_url: str, *, provider_name: str, model_name: str, tenant: TenantSetup, upstream_name: str = "mock-small"
):
    from routing.services import tenant_model_access_set

    provider = ProviderFactory(name=provider_name, base_url=f"{upstream_url}/v1")
    model = ModelFactory(
        name=model_name,
        provider=provider,
        upstream_name=upstream_name,
        **tenant.small.price_in_force().prices(),
    )
    tenant_model_access_set(
        tenant=tenant.tenant, allowed_models=[tenant.small, tenant.large, model], default_model=tenant.small
    )
    return model


def jsonl(lines: list) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)


def chat_line(custom_id: str, model: str, text: str = "hello", **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


FINISHED = ("completed", "failed", "cancelled", "expired")


def upload(client, lines: list) -> str:
    return client.files.create(file=("batch.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id


def wait_finished(client, batch_id: str, timeout: float = 30):
    return wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in FINISHED and b, timeout=timeout)


def rows(client, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines()]


def reported_cost(batch) -> Decimal:
    """The batch's cost as the API reports it (``llmops.cost_usd``)."""
    return Decimal(batch.model_extra["llmops"]["cost_usd"])


def wait_for(predicate: Callable[[], object], *, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
