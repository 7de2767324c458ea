"""Database work from async code.

Worker threads keep their Django connections between calls. A connection the server has since
closed (a Postgres restart, a failover, an idle timeout) would fail every later call on that
thread, so each call first lets Django drop connections that are broken or too old; with
CONN_HEALTH_CHECKS on, a reused connection is checked before its first query.
"""

from collections.abc import Callable
from functools import wraps

from asgiref.sync import sync_to_async
from django.db import close_old_connections


def database_sync_to_async(function: Callable) -> Callable:
    """``sync_to_async`` for ORM work off the event loop, on a thread pool, with healthy connections."""

    @wraps(function)
    def with_healthy_connections(*args, **kwargs):
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(with_healthy_connections, thread_sensitive=False)
