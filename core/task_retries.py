"""Retrying a Celery task the same way with a worker and without one (the embedded default runs tasks eagerly)."""


def retry_later(task, exc: Exception, *, countdown: float, max_retries: int | None = None):
    """The bound task's next attempt: task.retry after `countdown` seconds with a worker, and at once when the task runs
    eagerly (no broker: the embedded default), where no queue can hold a delayed retry and retry's Retry exception
    would propagate (CELERY_TASK_EAGER_PROPAGATES) into the request or thread that queued the task; then the next
    attempt's result is returned. Past the task's retries, `exc` is raised, as retry raises it."""
    request = task.request
    if not request.is_eager:
        raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc
    if request.retries >= (task.max_retries if max_retries is None else max_retries):
        raise exc
    return task.apply(request.args, request.kwargs, retries=request.retries + 1, throw=True).result
