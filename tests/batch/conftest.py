"""A live Celery worker process on the test broker and database, slow and fast mock upstreams, webhook receivers."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from django.conf import settings
from django.db import connection

from llmops.mock_upstream import MockUpstream
from tests.conftest import TenantSetup
from tests.factories import ModelFactory, ProviderFactory
from tests.servers import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
DELEGATING_PROVIDER = "mock-batch-endpoint"
WORKER_ENV = {
    "LLMOPS_BATCH_LEASE_SECONDS": "2",
    "LLMOPS_BATCH_POLL_SECONDS": "0.5",
    "LLMOPS_BATCH_TENANT_CONCURRENCY": "2",
    "LLMOPS_BATCH_DELEGATE_PROVIDERS": DELEGATING_PROVIDER,
    "LLMOPS_SNAPSHOT_CHECK_SECONDS": "0.2",
    "LLMOPS_JOBS_WEBHOOK_MAX_ATTEMPTS": "2",
}


class Worker:
    """``celery -A llmops worker`` as a child process, on the test database and the test Redis as broker."""

    def __init__(self):
        database = connection.settings_dict
        self.env = {
            **os.environ,
            **WORKER_ENV,
            "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": settings.REDIS_URL,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> "Worker":
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "llmops",
                "worker",
                "--pool=solo",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "warning",
            ],
            cwd=ROOT,
            env=self.env,
        )
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


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
    running = Worker().start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def slow_upstream():
    """Every completion takes 250 ms, so a batch is still running when a test cancels it or kills its worker."""
    app = MockUpstream(latency_ms=250)
    with ThreadedServer(app) as server:
        server.app = app
        yield server


def provider_model(upstream_url: str, *, provider_name: str, model_name: str, tenant: TenantSetup):
    from routing.services import tenant_model_access_set

    provider = ProviderFactory(name=provider_name, base_url=f"{upstream_url}/v1")
    model = ModelFactory(
        name=model_name,
        provider=provider,
        upstream_name="mock-small",
        input_price_per_million=tenant.small.input_price_per_million,
        cached_input_price_per_million=tenant.small.cached_input_price_per_million,
        output_price_per_million=tenant.small.output_price_per_million,
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


def wait_for(predicate: Callable[[], object], *, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
