from celery import shared_task
from django.utils import timezone

from tenants.payload_logs import payload_logs_purge


@shared_task
def payload_logs_purge_task() -> int:
    return payload_logs_purge(now=timezone.now())
