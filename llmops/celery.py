"""The Celery app. Tasks take ids, load, and call one service (see CONVENTIONS.md).

Embedded default: no broker, tasks run eagerly in the calling process.

A worker registers the tasks of every module that follows the naming convention for task modules in an installed
app: `tasks`, `tasks_<topic>` or `<topic>_tasks` (billing.tasks_finance, llmops.gateway.batch_tasks). Celery's own
discovery looks only for `tasks`, which left the finance tasks unregistered in a real worker while beat sent them.
"""

import os
import pkgutil

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")


def is_task_module(name: str) -> bool:
    return name == "tasks" or name.startswith("tasks_") or name.endswith("_tasks")


def task_modules() -> list[str]:
    """The dotted names of the task modules of every installed app; called once Django's apps are ready."""
    from django.apps import apps

    return [
        f"{config.name}.{module.name}"
        for config in apps.get_app_configs()
        for module in pkgutil.iter_modules([config.path])
        if is_task_module(module.name)
    ]


app = Celery("llmops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(task_modules, related_name=None)
