"""A daemon thread that handles work in batches: whatever was queued while the previous batch ran, up to a cap.

The semantic cache uses one for embeddings (one forward pass for many texts) and one for its writes (one upsert
for many entries). Idle, the thread blocks on its queue and costs no CPU. Callers on any thread or event loop
may queue work; a process forked after the thread started (Celery's prefork pool) starts its own on first use.
"""

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BatchWorker(Generic[T]):
    def __init__(self, name: str, handle: Callable[[list[T]], None], max_batch: Callable[[], int]):
        self.name = name
        self.handle = handle
        self.max_batch = max_batch
        self.lock = threading.Lock()
        self.queue: queue.SimpleQueue[T] | None = None
        self.thread: threading.Thread | None = None

    def put(self, item: T) -> None:
        with self.lock:
            if not self.running():
                # Not started yet, or a forked child, where the parent's thread does not run: start one on a new queue.
                self.queue = queue.SimpleQueue()
                self.thread = threading.Thread(target=self._run, args=(self.queue,), name=self.name, daemon=True)
                self.thread.start()
            self.queue.put(item)

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _run(self, items: queue.SimpleQueue[T]) -> None:
        while True:
            batch = [items.get()]
            limit = self.max_batch()
            while len(batch) < limit:
                try:
                    batch.append(items.get_nowait())
                except queue.Empty:
                    break
            try:
                self.handle(batch)
            except Exception:
                logger.exception("%s: a batch of %d failed", self.name, len(batch))
