"""One object per event loop, for what cannot be shared between loops (connection pools, a loop's own tasks)."""

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Generic, TypeVar

T = TypeVar("T")


class PerEventLoop(Generic[T]):
    """Made on first use in each running loop. A process may run many loops one after another (threads that call
    asyncio.run, tests), so a new loop's first use forgets the objects of loops that have closed."""

    def __init__(self, make: Callable[[asyncio.AbstractEventLoop], T]):
        self._make = make
        self._objects: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        found = self._objects.get(loop)
        if found is None:
            for closed in [known for known in self._objects if known.is_closed()]:
                del self._objects[closed]
            found = self._objects[loop] = self._make(loop)
        return found

    def pop(self) -> T | None:
        """Forget the running loop's object, returning it (None when it had none) for the caller to close."""
        return self._objects.pop(asyncio.get_running_loop(), None)


_worker_loops = threading.local()


def run_in_worker_loop(coroutine):
    """Run on this thread's own event loop, kept for the process's life so pooled clients are reused (Celery tasks
    that run the gateway's async code)."""
    loop = getattr(_worker_loops, "loop", None)
    if loop is None:
        loop = _worker_loops.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coroutine)


class LoopThread:
    """An event loop running for the process's life on a daemon thread of its own, for async work handed over by
    threads that must not wait for it (``submit``). Started on first use, and again in a process forked since."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        # The work of the running loop not ended yet, touched on its thread only: held (the loop keeps only weak
        # references to its tasks) and what ``drain`` waits for.
        self.tasks: set[asyncio.Task] = set()

    def submit(self, work: Coroutine) -> None:
        """Run ``work`` as a task of that loop; what it raises is its own to log."""
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.loop = asyncio.new_event_loop()
                self.tasks = set()
                self.thread = threading.Thread(target=self.loop.run_forever, name=self.name, daemon=True)
                self.thread.start()
            loop, tasks = self.loop, self.tasks

        def start() -> None:
            task = loop.create_task(work)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.call_soon_threadsafe(start)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the work submitted so far to end (at exit: the thread is a daemon, cut
        short). False when some was still running then."""
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                return True
            loop, tasks = self.loop, self.tasks

        async def submitted_so_far() -> None:
            # Scheduled after the submits before it (call_soon_threadsafe keeps their order): their tasks exist.
            if tasks:
                await asyncio.wait(list(tasks))

        waited = asyncio.run_coroutine_threadsafe(submitted_so_far(), loop)
        try:
            waited.result(timeout)
        except TimeoutError:
            waited.cancel()
            return False
        return True
