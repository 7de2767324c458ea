"""Work started on the event loop and not awaited: a settlement, a release, a record for a request whose own task is
ending or cancelled. The loop keeps only weak references to its tasks, so each one is held here until it ends."""

import asyncio
import logging
from collections.abc import Coroutine

logger = logging.getLogger(__name__)

_running: set[asyncio.Task] = set()


def run_in_background(work: Coroutine, *, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task:
    """Run ``work`` as a task of its own on ``loop`` (the running one by default), held until it ends. The task, for a
    caller that waits for it shielded (``asyncio.shield``): a cancel of the caller then leaves the work running."""
    task = (loop or asyncio.get_running_loop()).create_task(work)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def background_drain(timeout: float) -> int:
    """Wait up to ``timeout`` seconds until the work started on the running loop has ended, and the work it started
    in turn: at a graceful shutdown, before the loop closes and cancels what is left on it (a ledger row, a budget
    settlement). How many were still running when the time was up, logged; 0 when all ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # A copy: tasks of other loops (another server's thread) leave the set from their own threads.
    while running := {task for task in _running.copy() if task.get_loop() is loop}:
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning(
                "shutdown: %d background tasks still running after %g s are abandoned", len(running), timeout
            )
            return len(running)
        await asyncio.wait(running, timeout=remaining)
    return 0
