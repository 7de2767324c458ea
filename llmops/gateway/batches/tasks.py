"""Celery tasks for batches: ids in, one service each.

A worker that starts (or restarts after a crash) looks at every unfinished batch, as beat does every
LLMOPS_BATCH_POLL_SECONDS; the batch lease keeps two runners off the same batch.
"""

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from core.event_loops import run_in_worker_loop
from llmops.gateway.batches.runner import batch_process
from llmops.gateway.batches.services import batch_recheck_claim, batches_unfinished


# The name predates the move into this package; tasks already queued under it still run.
@shared_task(name="llmops.gateway.batch_tasks.batch_process_task", acks_late=True, reject_on_worker_lost=True)
def batch_process_task(batch_id: str) -> None:
    try:
        run_in_worker_loop(batch_process(batch_id))
    finally:
        # A run that failed half-way is looked at again too: its claimed lines go back to pending then.
        if batch_recheck_claim(batch_id=batch_id):
            batch_process_task.apply_async((batch_id,), countdown=settings.LLMOPS_BATCH_POLL_SECONDS)


# The name predates this module; a message beat sent under it before a deploy still runs.
@shared_task(name="llmops.gateway.batch_tasks.batches_resume")
def batches_resume() -> None:
    for batch_id in batches_unfinished():
        batch_process_task.delay(batch_id)


@worker_ready.connect
def _resume_on_start(sender, **kwargs) -> None:
    batches_resume.delay()
