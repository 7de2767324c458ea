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


NUL = "\x00"
# jsonb keeps a number as an exact decimal and gives a large float back without exponent or decimal point: 1e21
# returns as an integer, which JSON encoders refuse past 64 bits (orjson does, and the upstream request is orjson).
JSONB_NUMBER_LIMIT = 2**63


def storable(text: str) -> bool:
    """Whether PostgreSQL text can hold the string: it cannot hold NUL, so an id or filter with one names no row
    (and must not reach a query, which would fail)."""
    return NUL not in text


def unstorable_part(value) -> tuple[str, str] | None:
    """Where and why a JSON document would not come back from a jsonb column as it went in: the path
    (``messages[0].content``) of a string or key holding NUL, or of a number beyond ±2^63. None when it would.

    What is kept to be used later (job bodies, batch lines and metadata) is refused with it before it is stored.
    A NUL in a key is shown escaped in the path, which may be stored itself.
    """
    pending = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str) and not storable(item):
            return path, "holds the NUL character (\\u0000)"
        if isinstance(item, int | float) and not isinstance(item, bool) and abs(item) >= JSONB_NUMBER_LIMIT:
            return path, "is a number beyond ±2^63"
        if isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else key
                if not storable(key):
                    return child_path.replace(NUL, "\\u0000"), "holds the NUL character (\\u0000) in a key"
                pending.append((child_path, child))
        elif isinstance(item, list):
            pending.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
    return None
