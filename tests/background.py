"""Seconds of work a module's fixture needs that depend on nothing the suite does before it (migrating a database of
the module's own): wanted once collection shows the module will run, started on a thread once the worker's own test
database is made (so the two migrations do not run at once), and waited for by the fixture.

Each pytest-xdist worker runs its tests one after another and collects the whole suite, so every worker prepares
(under names of its own, tests/worker_env.py) what the selected modules need, though one worker runs each module: a
migration of some 8 s runs in a child process beside the worker's tests, and the module does not wait for it. What
the work does and how its failure is reported stay the fixture's, as when it did the work itself.
"""

import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]

Result = TypeVar("Result")

_wanted: dict[str, Callable] = {}
_started: dict[str, Future] = {}
_running: set[subprocess.Popen] = set()
_stopped = threading.Event()
_lock = threading.Lock()


def run_captured(args: list[str], env: dict[str, str], *, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command in the checkout, its output captured; killed if the session ends first. (At the tests' priority:
    niced, it could starve behind other work on a loaded machine while its module waits for it.)"""
    with _lock:
        if _stopped.is_set():
            raise RuntimeError("the session has ended")
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _running.add(process)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    finally:
        with _lock:
            _running.discard(process)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def background_start(name: str, work: Callable[[], Result]) -> None:
    """Run work() on a thread, once per session under this name."""
    with _lock:
        if name in _started:
            return
        future: Future = Future()
        _started[name] = future

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as error:  # the fixture that waits for it raises it
            future.set_exception(error)

    threading.Thread(target=run, name=f"background-{name}", daemon=True).start()


def background_want(name: str, work: Callable[[], Result]) -> None:
    """work() is to run on a thread when background_start_wanted() is called."""
    _wanted[name] = work


def background_start_wanted() -> None:
    for name, work in _wanted.items():
        background_start(name, work)


def background_result(name: str, work: Callable[[], Result]) -> Result:
    """What work() returned (or raised), starting it now if collection did not."""
    background_start(name, work)
    return _started[name].result(timeout=600)


def background_stop() -> None:
    """At the end of the session: a command still running (its module never ran) is killed."""
    with _lock:
        _stopped.set()
        running = list(_running)
    for process in running:
        process.kill()
        process.wait(timeout=10)
