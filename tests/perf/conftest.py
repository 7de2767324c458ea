"""Gateway and drainer as real separate processes, against the test database and Redis, for kill -9 tests."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    """The test database pytest-django created (test_<name>), where this test's committed rows are."""
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class ServiceProcess:
    """A child process that can be started again after a SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], *, health_url: str = ""):
        self.args, self.env, self.health_url = args, env, health_url
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env)
        if self.health_url:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(self.health_url, timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{self.args} did not come up")
                time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def process_env(transactional_db) -> dict[str, str]:
    if not settings.REDIS_URL:
        pytest.skip("the durable ledger stream needs REDIS_URL")
    return {
        **os.environ,
        "DATABASE_URL": _database_url(),
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
