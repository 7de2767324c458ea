from celery import shared_task

from routing.cache.store import cache_entries_expire


@shared_task
def cache_expiry_run() -> int:
    """Celery beat: delete expired cache entries of every tenant."""
    return cache_entries_expire()
