"""The embedded default as child processes: a gateway (and, with a broker, a Celery worker) on their own SQLite
file, without Redis, the ledger written directly, as ``make demo`` runs them.

Run as a script in the site's environment, this module seeds the file and reads its ledger through the project's
models (the test process itself is on Postgres):

    python -m tests.batch.sqlite_site seed <mock upstream url> <slow upstream url>   → {"key": "<acme's API key>"}
    python -m tests.batch.sqlite_site ledger <batch id>…                 → {<batch id>: {"rows", "cost_usd"}, …}
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson

from tests.background import background_result, run_captured
from tests.servers import ROOT, ServiceProcess, free_port


def sqlite_env(database: Path, media: Path, *, broker: str = "memory://") -> dict[str, str]:
    """With the in-memory broker Celery runs tasks eagerly in the gateway, as in the demo; with a real one, a worker
    runs them. No REDIS_URL: budgets count in the database and the ledger is written without the stream."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "llmops.settings",
        "DATABASE_URL": f"sqlite:///{database}",
        "REDIS_URL": "",
        "LLMOPS_LEDGER_MODE": "direct",
        "CELERY_BROKER_URL": broker,
        "CELERY_TASK_ALWAYS_EAGER": str(broker == "memory://").lower(),
        "MEDIA_ROOT": str(media),
        "LLMOPS_CACHE_EMBEDDER": "",
        "LLMOPS_BATCH_POLL_SECONDS": "0.5",
        "LOG_LEVEL": "WARNING",
    }


def run_here(env: dict[str, str], *args: str) -> dict:
    """This module as a script in the site's environment; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.batch.sqlite_site", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return orjson.loads(done.stdout.splitlines()[-1])


def sqlite_migrated() -> Path:
    """A migrated SQLite file in a folder of its own, removed when the session ends.

    Started at collection (tests/background.py): migrating takes some 8 s of CPU on SQLite, where every altered
    field rebuilds its table."""
    folder = Path(tempfile.mkdtemp(prefix="llmops-sqlite-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    database = folder / "db.sqlite3"
    args = [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"]
    migrated = run_captured(args, sqlite_env(database, folder / "media"), timeout=120)
    assert migrated.returncode == 0, f"manage.py migrate on SQLite failed:\n{migrated.stderr[-3000:]}"
    return database


def sqlite_template(folder: Path, *, mock_url: str, slow_url: str) -> tuple[Path, str]:
    """A migrated and seeded SQLite file (copied for each test) and the API key it holds."""
    database = folder / "db.sqlite3"
    shutil.copy(background_result("sqlite-migrated", sqlite_migrated), database)
    env = sqlite_env(database, folder / "media")
    return database, run_here(env, "seed", mock_url, slow_url)["key"]


@dataclass
class SqliteSite:
    env: dict[str, str]
    key: str
    port: int
    processes: list[ServiceProcess]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=30)

    def ledger(self, *batch_ids: str) -> dict[str, dict]:
        """Each batch's ledger rows: how many, and their cost."""
        return run_here(self.env, "ledger", *batch_ids)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def sqlite_site_start(template: Path, key: str, folder: Path, *, broker: str = "memory://", workers: int = 0):
    """A copy of the template, a uvicorn gateway on it and, with ``workers``, a prefork Celery worker pool."""
    database = folder / "db.sqlite3"
    shutil.copy(template, database)
    env = sqlite_env(database, folder / "media", broker=broker)
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "llmops.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    gateway = ServiceProcess([*args, "--no-access-log"], env, health_url=f"http://127.0.0.1:{port}/healthz")
    site = SqliteSite(env=env, key=key, port=port, processes=[gateway.start()])
    if workers:
        from tests.batch.conftest import celery_worker_process

        site.processes.append(celery_worker_process(env, concurrency=workers).start())
    return site


def _seed(mock_url: str, slow_url: str) -> dict:
    from tests.batch.conftest import provider_model
    from tests.conftest import make_tenant_setup

    acme = make_tenant_setup(mock_url, slug="acme")
    provider_model(slow_url, provider_name="slow-mock", model_name="acme-slow", tenant=acme)
    return {"key": acme.key}


def _ledger(*batch_ids: str) -> dict:
    from billing.models import UsageRecord

    answer = {}
    for batch_id in batch_ids:
        records = list(
            UsageRecord.objects.unscoped().filter(endpoint="/v1/batches", tags__icontains=f"batch:{batch_id}")
        )
        answer[batch_id] = {"rows": len(records), "cost_usd": str(sum((r.cost_usd for r in records), Decimal(0)))}
    return answer


if __name__ == "__main__":
    import django

    django.setup()
    command, *arguments = sys.argv[1:]
    answer = {"seed": _seed, "ledger": _ledger}[command](*arguments)
    sys.stdout.write(orjson.dumps(answer).decode() + "\n")
