"""Gateway and drainer as real separate processes, against the test database and Redis, for kill -9 tests."""

import os
import sys

import pytest
from django.conf import settings

from tests.servers import ServiceProcess, committed_database_url, free_port


@pytest.fixture
def process_env(transactional_db) -> dict[str, str]:
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
def spawn(process_env):
    """Start gateway (uvicorn, one process) and drainer processes; all are stopped after the test."""
    started: list[ServiceProcess] = []

    def gateway(port: int) -> ServiceProcess:
        args = [sys.executable, "-m", "uvicorn", "llmops.asgi:application", "--host", "127.0.0.1"]
        args += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
        service = ServiceProcess(args, process_env, health_url=f"http://127.0.0.1:{port}/healthz")
        started.append(service)
        return service

    def drainer(consumer: str) -> ServiceProcess:
        args = [sys.executable, "manage.py", "ledger_drain", "--consumer", consumer, "--claim-idle-seconds", "1"]
        service = ServiceProcess(args, process_env)
        started.append(service)
        return service

    yield gateway, drainer
    for service in started:
        service.stop()


@pytest.fixture
def gateway_port() -> int:
    return free_port()
