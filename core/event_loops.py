"""One object per event loop, for what cannot be shared between loops (connection pools, a loop's own tasks)."""

import asyncio
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
