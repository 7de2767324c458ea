"""Every task that beat schedules or the code enqueues is registered in a worker started as `celery -A llmops worker`.

The worker knows only the tasks of the modules it imports at start-up (`app.loader.import_default_modules()`), so
a task module nobody imports there is "unregistered" in production while eager tests that import it pass.
The worker's view is taken in a fresh interpreter, before anything else is imported.
"""

import ast
import json
import os
import subprocess
import sys

from tests.servers import ROOT

SOURCE_DIRS = ("llmops", "billing", "routing", "tenants", "core")
ENQUEUE_METHODS = {"delay", "apply_async"}

WORKER_VIEW = """
import importlib, json, sys
from llmops.celery import app
app.loader.import_default_modules()
registered = sorted(app.tasks)
enqueued = {}
for module, attribute in json.loads(sys.argv[1]):
    enqueued[f"{module}:{attribute}"] = getattr(importlib.import_module(module), attribute).name
beat = {name: entry["task"] for name, entry in app.conf.beat_schedule.items()}
print(json.dumps({"registered": registered, "beat": beat, "enqueued": enqueued}))
"""


def _module_name(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def enqueued_task_references() -> tuple[set[tuple[str, str]], set[str]]:
    """(module, attribute) of every task object the code calls .delay/.apply_async on, and every name sent by
    send_task, found in the source."""
    references: set[tuple[str, str]] = set()
    sent_by_name: set[str] = set()
    for directory in SOURCE_DIRS:
        for path in (ROOT / directory).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            module = _module_name(path)
            tree = ast.parse(path.read_text())
            imported = {
                alias.asname or alias.name: (node.module, alias.name)
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
                for alias in node.names
            }
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                target = node.func.value
                if node.func.attr in ENQUEUE_METHODS and isinstance(target, ast.Name):
                    references.add(imported.get(target.id, (module, target.id)))
                elif node.func.attr == "send_task" and node.args and isinstance(node.args[0], ast.Constant):
                    sent_by_name.add(node.args[0].value)
    return references, sent_by_name


def worker_view(references: set[tuple[str, str]]) -> dict:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "llmops.settings", "LLMOPS_CLOUDWATCH_NAMESPACE": "llmops"}
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    result = subprocess.run(
        [sys.executable, "-c", WORKER_VIEW, json.dumps(sorted(references))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_scheduled_and_enqueued_task_is_registered_in_a_worker():
    references, sent_by_name = enqueued_task_references()
    view = worker_view(references)
    registered = set(view["registered"])
    enqueued = set(view["enqueued"].values()) | sent_by_name
    unregistered_beat = {name: task for name, task in view["beat"].items() if task not in registered}
    assert unregistered_beat == {}, "beat schedules tasks a worker does not know"
    assert sorted(enqueued - registered) == [], "the code enqueues tasks a worker does not know"
    # The scan finds what it must: the async export and the batch runner are enqueued, the CloudWatch publisher
    # is scheduled when its namespace is set. Tasks that carry queued work kept their names when their modules moved.
    assert "billing.tasks_finance.usage_export_write_task" in enqueued
    assert "llmops.gateway.batch_tasks.batch_process_task" in enqueued
    assert view["enqueued"]["billing.alerts.tasks:alert_delivery_send"] == "billing.tasks.alert_delivery_send"
    assert "billing.tasks_finance.rollups_cloudwatch_publish_task" in view["beat"].values()
