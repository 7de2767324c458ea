"""The Celery app. Tasks take ids, load, and call one service (see CONVENTIONS.md).

Embedded default: no broker, tasks run eagerly in the calling process.

A worker registers the tasks of every `tasks` module in an installed app, at any depth (routing.tasks,
billing.alerts.tasks, llmops.gateway.batches.tasks). Celery's own discovery looks only at the app's top level, which
left the tasks of a feature package unregistered in a real worker while beat sent them.
"""

import os
import pkgutil
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")


def task_modules() -> list[str]:
    """The dotted names of the task modules of every installed app; called once Django's apps are ready."""
    from django.apps import apps
    from django.conf import settings

    project_apps = [config for config in apps.get_app_configs() if Path(config.path).is_relative_to(settings.BASE_DIR)]
    return [
        module.name
        for config in project_apps
        for module in pkgutil.walk_packages([config.path], prefix=f"{config.name}.")
        if module.name.rsplit(".", 1)[-1] == "tasks"
    ]


app = Celery("llmops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(task_modules, related_name=None)
