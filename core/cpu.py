"""CPU work proportional to a request's size, kept off the event loop when the request is large.

Below OFFLOAD_MIN_CHARS the work runs inline: a hop to a thread would cost more than it saves, and small requests
stay as fast as they were. From it up, the work runs on a small thread pool of the process, so one tenant's huge prompt
costs its own request time instead of stalling every request the worker is serving.

That helps only for work that lets go of the GIL. tiktoken's Rust core does while it encodes, and Python code does
every few milliseconds; one long `re` search or a C call such as orjson.loads does not, so such work is bounded by
size instead (routing.policy.scoring, routing.caps).
"""

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

OFFLOAD_MIN_CHARS = 32 * 1024
# Threads start on demand; more than the cores would only queue the same work in the kernel instead of here.
_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="llmops-cpu")


async def run_sized(size: int, function: Callable[..., T], /, *args, **kwargs) -> T:
    """``function(*args, **kwargs)``: inline when ``size`` (characters of the input it reads) is small, else on the
    CPU pool while the event loop serves other requests."""
    if size < OFFLOAD_MIN_CHARS:
        return function(*args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(function, *args, **kwargs))
