"""core.event_loops.start_eagerly: the chosen coroutines run their first step as their task is created, as
``eager_start=True`` does on Python 3.12; everything else is scheduled as usual. On asyncio's loop and uvloop's."""

import asyncio
import contextvars
import sys

import pytest
import uvloop

from core.event_loops import start_eagerly

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 starts tasks eagerly itself")
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
seen = contextvars.ContextVar("seen", default="caller's")


@pytest.fixture(params=LOOPS)
def run(request):
    def run_on_new_loop(scenario):
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(scenario())
        finally:
            loop.close()

    return run_on_new_loop


async def finishes_at_once(log):
    log.append("first step")
    seen.set("task's")
    return 5


async def waits(log, future):
    log.append("first step")
    value = await future
    log.append(value)
    return value * 2


async def remembers(log, future):
    seen.set("task's")
    await future
    log.append(seen.get())


async def cancellable(log, future):
    log.append("first step")
    try:
        await future
    except asyncio.CancelledError:
        log.append("cancelled")
        raise


async def spins(log):
    log.append("first step")
    try:
        while True:
            await asyncio.sleep(0)
    except asyncio.CancelledError:
        log.append("cancelled")
        raise


async def fails_at_once(log):
    log.append("first step")
    raise ValueError("refused")


def test_a_coroutine_that_finishes_in_its_first_step_is_a_finished_future_in_its_own_context(run):
    async def scenario():
        log = []
        start_eagerly(asyncio.get_running_loop(), finishes_at_once.__code__)
        task = asyncio.get_running_loop().create_task(finishes_at_once(log))
        return log, task.done() and task.result(), seen.get()

    assert run(scenario) == (["first step"], 5, "caller's")


def test_a_coroutine_that_waits_goes_on_in_a_task(run):
    async def scenario():
        log, future = [], asyncio.get_running_loop().create_future()
        start_eagerly(asyncio.get_running_loop(), waits.__code__)
        task = asyncio.ensure_future(waits(log, future))
        started = list(log)
        future.set_result(3)
        return started, await task, log

    assert run(scenario) == (["first step"], 6, ["first step", 3])


def test_cancelling_the_task_reaches_the_coroutine(run):
    async def scenario():
        log, future = [], asyncio.get_running_loop().create_future()
        start_eagerly(asyncio.get_running_loop(), cancellable.__code__)
        task = asyncio.ensure_future(cancellable(log, future))
        started = list(log)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return started, log, future.cancelled()

    assert run(scenario) == (["first step"], ["first step", "cancelled"], True)


def test_a_task_cancelled_before_its_first_step_cancels_the_coroutine(run):
    """As an eager task's would: the coroutine waits on its future from the moment the task is made."""

    async def scenario():
        log, future = [], asyncio.get_running_loop().create_future()
        start_eagerly(asyncio.get_running_loop(), cancellable.__code__)
        task = asyncio.ensure_future(cancellable(log, future))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return log, future.cancelled()

    assert run(scenario) == (["first step", "cancelled"], True)


def test_a_task_cancelled_before_its_first_step_cancels_the_task_it_awaits(run):
    async def scenario():
        log, gate = [], asyncio.get_running_loop().create_future()
        inner = asyncio.ensure_future(waits([], gate))
        await asyncio.sleep(0)
        start_eagerly(asyncio.get_running_loop(), cancellable.__code__)
        task = asyncio.ensure_future(cancellable(log, inner))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait([inner], timeout=1)
        return log, inner.cancelled()

    assert run(scenario) == (["first step", "cancelled"], True)


def test_the_first_steps_context_goes_on_with_the_task(run):
    async def scenario():
        log, future = [], asyncio.get_running_loop().create_future()
        start_eagerly(asyncio.get_running_loop(), remembers.__code__)
        task = asyncio.ensure_future(remembers(log, future))
        future.set_result(None)
        await task
        return log, seen.get()

    assert run(scenario) == (["task's"], "caller's")


def test_a_closed_task_closes_its_coroutine_even_when_that_closed_first(run):
    """Garbage collection may close a pending task's coroutine before the task's own generator."""

    async def scenario():
        log, future = [], asyncio.get_running_loop().create_future()
        start_eagerly(asyncio.get_running_loop(), cancellable.__code__)
        task = asyncio.ensure_future(cancellable(log, future))
        await asyncio.sleep(0)
        task.get_coro().gi_frame.f_locals["coroutine"].close()
        task.get_coro().close()
        task.cancel()
        await asyncio.wait([task])
        return log, task.cancelled()

    assert run(scenario) == (["first step"], True)


def test_cancelling_a_task_that_yields_without_a_future_reaches_the_coroutine(run):
    async def scenario():
        log = []
        start_eagerly(asyncio.get_running_loop(), spins.__code__)
        task = asyncio.ensure_future(spins(log))
        started = list(log)
        await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1)
        return started, log, task in done and task.cancelled()

    assert run(scenario) == (["first step"], ["first step", "cancelled"], True)


def test_a_first_step_that_raises_ends_the_future_with_the_error(run):
    async def scenario():
        log = []
        start_eagerly(asyncio.get_running_loop(), fails_at_once.__code__)
        future = asyncio.ensure_future(fails_at_once(log))
        ended = future.done()
        with pytest.raises(ValueError, match="refused"):
            await future
        return log, ended

    assert run(scenario) == (["first step"], True)


def test_other_coroutines_are_scheduled_through_the_factory_set_before(run):
    async def scenario():
        loop, log, made = asyncio.get_running_loop(), [], []

        def recording_factory(loop, coroutine, **context):
            made.append(coroutine.__name__)
            return asyncio.Task(coroutine, loop=loop, **context)

        loop.set_task_factory(recording_factory)
        start_eagerly(loop, finishes_at_once.__code__)
        start_eagerly(loop, fails_at_once.__code__)
        other = asyncio.ensure_future(waits(log, loop.create_future()))
        scheduled_only = list(log)
        eager = asyncio.ensure_future(finishes_at_once(log))
        await asyncio.sleep(0)
        other.cancel()
        return scheduled_only, eager.result(), made, log

    assert run(scenario) == ([], 5, ["waits"], ["first step", "first step"])


def test_a_factory_set_before_is_called_as_the_loop_calls_it():
    """asyncio's loop gives a factory no context when there is none, so a two-argument factory works there."""

    async def scenario():
        loop, made = asyncio.get_running_loop(), []

        def two_argument_factory(loop, coroutine):
            made.append(coroutine.__name__)
            return asyncio.Task(coroutine, loop=loop)

        loop.set_task_factory(two_argument_factory)
        start_eagerly(loop, remembers.__code__)
        await asyncio.ensure_future(waits([], _resolved(loop)))
        log, future = [], loop.create_future()
        remembering = asyncio.ensure_future(remembers(log, future))
        future.set_result(None)
        await remembering
        return list(made), log

    assert asyncio.run(scenario()) == (["waits", "_continued"], ["task's"])


def _resolved(loop) -> asyncio.Future:
    future = loop.create_future()
    future.set_result(1)
    return future
