"""Celery task for shadow evaluation: the sealed sample in, one service call per sampled lever, then that lever's
quality SLOs checked."""

import logging

from celery import shared_task

from billing.models import Lever
from billing.quality.services import quality_slos_check
from core.event_loops import run_in_worker_loop
from llmops.gateway.shadow.services import shadow_evaluation_run, shadow_sample_open

logger = logging.getLogger(__name__)

# Its own queue, so a backlog of samples never delays the tasks of the default queue (budget alerts, batches).
SHADOW_QUEUE = "shadow"


# Not retried: a sample is one of many, and a retry could pay for calls twice; a lever evaluated already is skipped.
@shared_task(name="llmops.gateway.shadow.tasks.shadow_evaluate_task", ignore_result=True)
def shadow_evaluate_task(sealed: str) -> None:
    sample = shadow_sample_open(sealed)
    if sample is None:
        return
    judged = [
        lever
        for lever in sample.levers
        if run_in_worker_loop(shadow_evaluation_run(sample=sample, lever=Lever(lever))) is not None
    ]
    # The levers' SLOs see the new verdicts at once: a breach alerts (and acts) on the evaluation that made it. A
    # check that fails costs no other lever its check (every verdict was recorded first); the next verdict checks again.
    for lever in judged:
        try:
            quality_slos_check(tenant_id=sample.tenant_id, lever=lever)
        except Exception:
            logger.exception("quality SLOs of tenant %s, lever %s not checked", sample.tenant_id, lever)
