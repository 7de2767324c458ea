"""One object per event loop, for what cannot be shared between loops (connection pools, a loop's own tasks)."""

import asyncio
import contextvars
import sys
import threading
import types
from collections.abc import Callable
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


def start_eagerly(loop: asyncio.AbstractEventLoop, code: types.CodeType) -> None:
    """On Python 3.11, make ``loop`` run the first step of each task whose coroutine runs ``code`` as the task is
    created, as ``eager_start=True`` does from Python 3.12 (where this does nothing): up to its first real wait, in
    the task's context. A coroutine that finishes there is handed back as a finished future (a plain future: no name,
    no ``get_coro``); one that waits goes on in a task. During that first step ``asyncio.current_task()`` is the
    caller's task, not the new one. Every other coroutine gets the loop's usual task (or the factory that was set
    before). Idempotent per code."""
    if sys.version_info >= (3, 12):
        return
    previous = loop.get_task_factory()
    if isinstance(previous, _EagerFactory):
        previous.codes.add(code)
        return
    loop.set_task_factory(_EagerFactory({code}, previous))


class _EagerFactory:
    def __init__(self, codes: set[types.CodeType], previous: Callable | None):
        self.codes = codes
        self.previous = previous

    def __call__(self, loop, coroutine, *, context=None):
        if getattr(coroutine, "cr_code", None) not in self.codes:
            return self._task(loop, coroutine, context)
        first_step_context = context if context is not None else contextvars.copy_context()
        ended = loop.create_future()
        try:
            awaiting = first_step_context.run(coroutine.send, None)
        except StopIteration as stop:
            ended.set_result(stop.value)
        except asyncio.CancelledError:
            ended.cancel()
        except Exception as error:
            ended.set_exception(error)
        else:
            rest = _continued(coroutine, awaiting)
            # To its first bare yield now, so that a cancellation thrown in before the task's first step reaches
            # the coroutine as well (an eager task waits on ``awaiting`` from the start).
            rest.send(None)
            # Made in the first step's context, which the task copies when the caller gave none.
            return first_step_context.run(self._task, loop, rest, context)
        return ended

    def _task(self, loop, coroutine, context):
        """A task as the loop would make it: through the factory set before, called as the loop calls it
        (asyncio's passes no context when there is none)."""
        if self.previous is None:
            return asyncio.Task(coroutine, loop=loop, context=context)
        if context is None:
            return self.previous(loop, coroutine)
        return self.previous(loop, coroutine, context=context)


@types.coroutine
def _continued(coroutine, awaiting):
    """``coroutine`` from where its first step stopped, waiting on ``awaiting``; what the task throws in is passed
    on to it, from before the task's first step on. A task cancelled before that step cancels ``awaiting`` and waits
    for it, as a task waiting on a future does."""
    thrown = None
    try:
        yield
    except GeneratorExit:
        coroutine.close()
        raise
    except asyncio.CancelledError as cancelled:
        # As Task.cancel does with the future its task waits on: cancelled, the coroutine sees it when it wakes; a
        # future past cancelling is let go (no task took it) and the cancellation thrown in instead.
        if not (asyncio.isfuture(awaiting) and awaiting.cancel(*cancelled.args[:1])):
            if asyncio.isfuture(awaiting):
                awaiting._asyncio_future_blocking = False
            thrown = cancelled
    except BaseException as error:
        thrown = error
    while True:
        if thrown is None:
            try:
                yield awaiting
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:
                thrown = error
        try:
            awaiting = coroutine.send(None) if thrown is None else coroutine.throw(thrown)
        except StopIteration as stop:
            return stop.value
        finally:
            thrown = None
