"""llmops.asgi: what ends the disconnect listener decides whether the view still running is cancelled."""

import asyncio
import logging

from django.core.exceptions import RequestAborted

from llmops.asgi import _cancel_on_disconnect


async def _listener_and_view(raises: BaseException | None):
    async def listener():
        if raises is None:
            await asyncio.sleep(10)
        raise raises

    view = asyncio.create_task(asyncio.sleep(10))
    listening = asyncio.create_task(listener())
    listening.add_done_callback(lambda done: _cancel_on_disconnect(done, view))
    await asyncio.sleep(0.01)
    if raises is None:
        listening.cancel()
        await asyncio.sleep(0.01)
    cancelled = view.cancelled()
    view.cancel()
    return cancelled


def test_a_disconnect_cancels_the_view_quietly(caplog):
    with caplog.at_level(logging.ERROR, logger="llmops.asgi"):
        assert asyncio.run(_listener_and_view(RequestAborted()))
    assert not caplog.records


def test_a_listener_the_handler_cancels_leaves_the_view_alone():
    assert not asyncio.run(_listener_and_view(None))


def test_an_unexpected_message_is_logged_and_the_view_cancelled(caplog):
    with caplog.at_level(logging.ERROR, logger="llmops.asgi"):
        assert asyncio.run(_listener_and_view(AssertionError("Invalid ASGI message after request body: http.request")))
    assert [record.message for record in caplog.records] == ["the disconnect listener ended without a disconnect"]
