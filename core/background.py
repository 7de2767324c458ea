"""Work started on the event loop and not awaited: a settlement, a release, a record for a request whose own task is
ending or cancelled. The loop keeps only weak references to its tasks, so each one is held here until it ends."""

import asyncio
from collections.abc import Coroutine

_running: set[asyncio.Task] = set()


def run_in_background(work: Coroutine, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Run ``work`` as a task of its own on ``loop`` (the running one by default), held until it ends."""
    task = (loop or asyncio.get_running_loop()).create_task(work)
    _running.add(task)
    task.add_done_callback(_running.discard)
