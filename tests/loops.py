"""Event loops for sync tests that call async code."""

import asyncio

from routing.providers.base import upstream_client_close


def run(coroutine):
    """Run on a fresh event loop (Redis and upstream clients never outlive theirs), closing its upstream client's
    connections before the loop ends."""

    async def closing_clients():
        try:
            return await coroutine
        finally:
            await upstream_client_close()

    return asyncio.run(closing_clients())
