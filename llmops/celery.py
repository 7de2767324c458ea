"""The Celery app. Tasks take ids, load, and call one service (see CONVENTIONS.md).

Embedded default: no broker, tasks run eagerly in the calling process.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")

app = Celery("llmops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
