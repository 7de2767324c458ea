"""A stream whose client leaves before its body is iterated is finished all the same. The upstream stream is open (and
billed) once the response is returned; the client goes away while the response's headers wait to go out (uvicorn
holds ``send`` while its write buffer is full), so the handler never iterates the body. The request still gets its
499 row, its reservation settled, its slot back and its upstream stream closed, on every route that streams a chat
completion."""

import asyncio

import orjson
import pytest
from django.http import StreamingHttpResponse

from billing.budgets.services import budget_create
from billing.models import UsageRecord
from core.background import background_drain
from core.redis import sync_redis
from llmops import asgi
from llmops.gateway.concurrency import KEY_PREFIX, inflight_acquire, inflight_release_after
from routing import upstream
from tests.asgi_requests import authorized_body_headers, body_then_disconnect, http_scope
from tests.gateway.test_failed_attempts_live import LIMIT, MESSAGES, assert_counted, only_request_row
from tests.gateway.test_inflight_slots import refused
from tests.loops import run

ROUTES = {
    "chat": ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 20}),
    "chat-urlconf": ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 20}),
    "messages": ("/v1/messages", {"messages": MESSAGES, "max_tokens": 20}),
    "responses": ("/v1/responses", {"input": MESSAGES[0]["content"], "max_output_tokens": 20}),
}


class ConnectionLost(OSError):
    pass


async def leave_while_the_headers_wait(path: str, body: dict, key: str, *, send_fails: bool = False) -> list[dict]:
    """The request served by the gateway's ASGI application; its client disconnects while ``http.response.start``
    waits to be written, or (``send_fails``) the server's ``send`` raises for it. What was sent, once the work the
    request left running has ended."""
    raw = orjson.dumps(body)
    headers_waiting = asyncio.Event()
    sent = []

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.start":
            if send_fails:
                raise ConnectionLost("the connection was lost")
            headers_waiting.set()
            await asyncio.Event().wait()  # the write buffer stays full

    scope = http_scope(path, headers=authorized_body_headers(key, raw))
    try:
        await asgi.application(scope, body_then_disconnect(raw, headers_waiting), send)
    except ConnectionLost:
        assert send_fails
    await background_drain(10)
    return sent


@pytest.fixture
def upstream_streams(monkeypatch) -> list:
    """The upstream streams the gateway opens, each noting whether it was closed."""
    opened = []
    open_chat_stream = upstream.open_chat_stream

    async def noted(*args, **kwargs):
        stream = await open_chat_stream(*args, **kwargs)
        aclose = stream.aclose

        async def closing():
            stream.noted_closed = True
            await aclose()

        stream.noted_closed = False
        stream.aclose = closing
        opened.append(stream)
        return stream

    monkeypatch.setattr(upstream, "open_chat_stream", noted)
    return opened


@pytest.mark.parametrize(
    "route,send_fails",
    [*((route, False) for route in ROUTES), ("chat", True), ("messages", True)],
    ids=[*ROUTES, "chat-send-fails", "messages-send-fails"],
)
def test_a_stream_whose_client_leaves_before_its_body_is_iterated_is_finished(
    gateway, acme, mock_upstream, upstream_streams, monkeypatch, route, send_fails
):
    if route == "chat-urlconf":
        monkeypatch.setattr(asgi, "DIRECT_ROUTES", {})
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    path, body = ROUTES[route]
    served_before = mock_upstream.app.requests_served

    sent = run(
        leave_while_the_headers_wait(
            path, {**body, "model": acme.small.name, "stream": True}, acme.key, send_fails=send_fails
        )
    )

    assert [(message["type"], message.get("status")) for message in sent] == [("http.response.start", 200)]
    assert mock_upstream.app.requests_served == served_before + 1
    [stream] = upstream_streams
    assert stream.noted_closed
    request = only_request_row()
    assert (request.http_status, request.error_code, request.served_model) == (
        499,
        "client_disconnected",
        acme.small.name,
    )
    # The prompt went upstream: the provider bills it, and the row charges the gateway's count of it.
    assert request.prompt_tokens > 0 and request.cost_usd > 0 and request.usage_estimated
    assert UsageRecord.objects.unscoped().count() == 1
    assert_counted(budget, request.cost_usd)
    assert sync_redis().zcard(KEY_PREFIX + str(acme.tenant.id)) == 0


def test_without_redis_a_stream_closed_unsent_gives_its_slot_back(settings):
    """The embedded deployment counts slots in process memory, where one never given back is held until a restart."""
    settings.REDIS_URL = ""
    tenant_id = 4242

    async def body():
        yield b"data: [DONE]\n\n"

    async def closed_unsent():
        slot = await inflight_acquire(tenant_id=tenant_id, request_id="unsent", limit=1)
        response = StreamingHttpResponse(body(), content_type="text/event-stream")
        inflight_release_after(slot, response)
        response.close()
        return await refused(tenant_id, 1)

    assert run(closed_unsent()) is False
