"""Celery tasks for async jobs: ids in, one service each."""

from celery import shared_task
from django.conf import settings

from core.event_loops import run_in_worker_loop
from core.task_retries import retry_or_run_now
from llmops.gateway.jobs.services import (
    WebhookDeliveryError,
    job_run,
    job_webhook_attempt,
    job_webhook_give_up,
    job_webhook_unattempted,
)

WEBHOOK_RETRY_BASE_SECONDS = 5


# The name predates the move into this package; tasks already queued under it still run.
@shared_task(name="llmops.gateway.jobs_tasks.job_run_task", acks_late=True, reject_on_worker_lost=True)
def job_run_task(job_id: str) -> None:
    # The run that finished the job queues its webhook. A task delivered again for a finished job queues it only if
    # no attempt was made (its worker died before queuing it): otherwise it would start a second retry chain.
    if run_in_worker_loop(job_run(job_id=job_id)) or job_webhook_unattempted(job_id=job_id):
        job_webhook_task.delay(job_id)


# The name predates the move into this package; tasks already queued under it still run. Delivered again when its
# worker dies mid-delivery, rather than left pending: the receiver is sent the same webhook-id, to drop a repeat.
@shared_task(name="llmops.gateway.jobs_tasks.job_webhook_task", bind=True, acks_late=True, reject_on_worker_lost=True)
def job_webhook_task(self, job_id: str) -> None:
    try:
        job_webhook_attempt(job_id=job_id)
    except WebhookDeliveryError as exc:
        if self.request.retries + 1 >= settings.LLMOPS_JOBS_WEBHOOK_MAX_ATTEMPTS:
            job_webhook_give_up(job_id=job_id)
            return
        countdown = WEBHOOK_RETRY_BASE_SECONDS * 2**self.request.retries
        retry_or_run_now(self, exc, countdown=countdown, max_retries=settings.LLMOPS_JOBS_WEBHOOK_MAX_ATTEMPTS - 1)
