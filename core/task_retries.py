"""Retrying a Celery task the same way with a worker and without one (the embedded default runs tasks eagerly)."""

import logging
from typing import Any

logger = logging.getLogger(__name__)


def retry_or_run_now(task, exc: Exception, *, countdown: float, max_retries: int | None = None) -> Any:
    """The bound task's next attempt: task.retry after `countdown` seconds with a worker. When the task runs eagerly
    (no broker: the embedded default), no queue can hold a delayed retry and retry's Retry exception would propagate
    (CELERY_TASK_EAGER_PROPAGATES) into the request or thread that queued the task: the next attempt runs at once and
    its result is returned, and past the last one the failure is logged, as a worker logs it, not raised into the
    caller. A task that may retry without end is not retried eagerly (it would never return)."""
    request = task.request
    if not request.is_eager:
        raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc
    limit = task.max_retries if max_retries is None else max_retries
    if limit is None:
        logger.error("task %s failed; it retries without end, so it is not retried eagerly", task.name, exc_info=exc)
        return None
    if request.retries >= limit:
        logger.error("task %s failed after %d attempts", task.name, request.retries + 1, exc_info=exc)
        return None
    return task.apply(request.args, request.kwargs, retries=request.retries + 1, throw=True).result
