"""The production topology (the Procfile's processes) started as real processes on Postgres and Redis, with AWS
played by moto's server over HTTP, for tests that drive it only through its public interfaces.

One topology serves the whole module: its own database (created, migrated and seeded with the same management
commands `make serve ARGS=--mock` runs), its own Redis database (E2E_REDIS_URL, `make test` sets it; the suite's
in-process ledger drainer reads REDIS_URL's stream), beat at a short interval
(LLMOPS_BEAT_INTERVAL_SECONDS). Process output goes to files under pytest's temporary directory.
"""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import httpx
import psycopg
import pytest
import redis

from tests.background import background_result, run_captured
from tests.servers import ROOT, Receiver, ThreadedServer, free_port

BEAT_INTERVAL_SECONDS = 5.0
STATEMENTS_BUCKET = "e2e-statements"
CLOUDWATCH_NAMESPACE = "llmops-e2e"
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


def wait_for(condition: Callable, *, timeout: float, what: str, interval: float = 0.2):
    """Poll until condition() returns something truthy; return it, or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout:g} s: {what}")
        time.sleep(interval)


def procfile_commands() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {match[1]: match[2] for line in lines if (match := PROCFILE_LINE.match(line))}


def _url_answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


class Topology:
    """The Procfile's processes, each in its own process group, started and killed one by one as an operator's
    process manager would."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.commands = procfile_commands()
        self.processes: dict[str, subprocess.Popen] = {}
        self.url = f"http://127.0.0.1:{env['PORT']}"

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}"
        return result.stdout

    def start(self, name: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            ["bash", "-c", self.commands[name]],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        process = self.processes[name]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def _fresh_database(base_url: str) -> str:
    url = urlsplit(base_url)
    name = f"{url.path.lstrip('/')}_e2e"
    with psycopg.connect(url._replace(path="/postgres").geturl(), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
        # Commits return before their WAL reaches the disk: the suite kills processes, never Postgres, so this only
        # makes the migration's hundreds of small commits fast.
        connection.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    return url._replace(path=f"/{name}").geturl()


def e2e_urls() -> tuple[str, str]:
    """The Postgres server's URL (the topology's database is made beside the suite's) and the topology's Redis."""
    return os.environ.get("DATABASE_URL", ""), os.environ.get("E2E_REDIS_URL", "")


def e2e_possible() -> bool:
    database_url, redis_url = e2e_urls()
    return database_url.startswith("postgres") and bool(redis_url)


def migrated_database() -> tuple[str, subprocess.CompletedProcess]:
    """A fresh database for the topology, and what `manage.py migrate` said migrating it, as the deploy does.

    Started at collection (tests/background.py), so the module does not wait for the migration."""
    database_url, redis_url = e2e_urls()
    url = _fresh_database(database_url)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "llmops.settings", "DATABASE_URL": url, "REDIS_URL": redis_url}
    return url, run_captured([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], env)


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    port = free_port()
    logs = tmp_path_factory.mktemp("moto")
    with (logs / "moto.log").open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _url_answers(f"{url}/moto-api/"), timeout=30, what="moto_server answers")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def aws(moto_server):
    """boto3 clients on moto's server, as the topology's processes see it (AWS_ENDPOINT_URL)."""
    options = {
        "endpoint_url": moto_server,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    return {"s3": boto3.client("s3", **options), "cloudwatch": boto3.client("cloudwatch", **options)}


@pytest.fixture(scope="module")
def webhook_receiver():
    receiver = Receiver()
    with ThreadedServer(receiver) as server:
        server.receiver = receiver
        yield server


@pytest.fixture(scope="module")
def topology(tmp_path_factory, moto_server, aws):
    if not e2e_possible():
        pytest.skip("the production topology needs Postgres (DATABASE_URL) and a Redis database (E2E_REDIS_URL)")
    _, redis_url = e2e_urls()
    database, migrated = background_result("e2e-database", migrated_database)
    assert migrated.returncode == 0, f"manage.py migrate failed:\n{migrated.stderr[-3000:]}"
    aws["s3"].create_bucket(Bucket=STATEMENTS_BUCKET)
    redis.Redis.from_url(redis_url).flushdb()
    work = tmp_path_factory.mktemp("topology")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "llmops.settings",
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "LLMOPS_LEDGER_MODE": "stream",
        "PORT": str(free_port()),
        "MOCK_PORT": str(free_port()),
        "WEB_CONCURRENCY": "2",
        "WORKER_CONCURRENCY": "2",
        "LOG_LEVEL": "INFO",
        "LLMOPS_BEAT_INTERVAL_SECONDS": str(BEAT_INTERVAL_SECONDS),
        "LLMOPS_BATCH_POLL_SECONDS": "1",
        "LLMOPS_DEMO_DIR": str(work / "demo"),
        "MEDIA_ROOT": str(work / "media"),
        "LLMOPS_STATEMENTS_BUCKET": STATEMENTS_BUCKET,
        "LLMOPS_CLOUDWATCH_NAMESPACE": CLOUDWATCH_NAMESPACE,
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    topology = Topology(env, work)
    try:
        # The database was migrated while the suite's other tests ran (migrated_database); beat starts last, once
        # the demo's history is in, so its first CloudWatch run publishes the last closed hour of that history.
        topology.start("mock")
        topology.start("web")
        topology.start("drain")
        topology.start("worker")
        topology.manage("seed_demo", "--upstream-url", f"http://127.0.0.1:{env['MOCK_PORT']}/v1")
        topology.start("beat")
        wait_for(lambda: _url_answers(f"{topology.url}/readyz"), timeout=90, what="the gateway is ready")
        wait_for(lambda: _url_answers(f"http://127.0.0.1:{env['MOCK_PORT']}/v1/models"), timeout=30, what="mock")
        yield topology
    finally:
        topology.stop()
        redis.Redis.from_url(redis_url).flushdb()


class Admin:
    """The admin's HTTP interface with a logged-in session: /api/ and the admin pages."""

    def __init__(self, base_url: str, password: str):
        self.client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
        self.client.get("/admin/login/")
        response = self.client.post(
            "/admin/login/",
            data={
                "username": "admin",
                "password": password,
                "csrfmiddlewaretoken": self.client.cookies["csrftoken"],
                "next": "/admin/",
            },
        )
        assert response.status_code == 302, response.text[:500]

    def _csrf(self) -> dict[str, str]:
        return {"X-CSRFToken": self.client.cookies["csrftoken"]}

    def get(self, path: str, **params) -> httpx.Response:
        return self.client.get(path, params=params)

    def post_json(self, path: str, payload: dict) -> httpx.Response:
        return self.client.post(path, json=payload, headers=self._csrf())

    def post_form(self, path: str, data: dict) -> httpx.Response:
        return self.client.post(path, data={**data, "csrfmiddlewaretoken": self.client.cookies["csrftoken"]})

    def usage(self, *, since: date, until: date, group_by: str) -> list[dict]:
        """The tenant's ledger aggregated by group_by, from GET /api/usage/."""
        response = self.get(
            "/api/usage/",
            tenant="demo",
            since=since.isoformat(),
            until=until.isoformat(),
            group_by=group_by,
            limit=1000,
        )
        assert response.status_code == 200, response.text[:500]
        return response.json()["results"]

    def ledger(self, *, since: date, until: date) -> dict[str, dict]:
        """The tenant's ledger rows by request id, from the streamed CSV export."""
        response = self.get("/api/usage/export.csv", tenant="demo", since=since.isoformat(), until=until.isoformat())
        assert response.status_code == 200, response.text[:500]
        return {row["request_id"]: row for row in csv.DictReader(io.StringIO(response.text))}


@pytest.fixture(scope="module")
def demo(topology):
    demo_dir = Path(topology.env["LLMOPS_DEMO_DIR"])
    admin = Admin(topology.url, (demo_dir / "demo-admin-password").read_text().strip())
    return {"key": (demo_dir / "demo-api-key").read_text().strip(), "admin": admin}


def usage_total(topology: Topology, *, since: date, until: date) -> dict:
    """The ledger's total for the demo tenant, from `manage.py usage_report`."""
    report = topology.manage(
        "usage_report",
        "--tenant",
        "demo",
        "--since",
        since.isoformat(),
        "--until",
        until.isoformat(),
        "--group-by",
        "day",
        "--format",
        "json",
    )
    return json.loads(report)["total"]
