"""llmops.asgi: a direct view's response is closed (what it holds released) without ``request_finished``,
whose receivers reset what such a view never uses on the loop; a resolved request still sends it. What a direct route
starts ahead of its view is started once the whole body has arrived, and cancelled once the view is done."""

import asyncio

import pytest
from django.core import signals
from django.http import HttpResponse

from llmops import asgi
from tests.asgi_requests import http_scope

DIRECT_PATH = "/v1/direct-close-probe"


async def _serve(path: str) -> list[dict]:
    sent, body_sent = [], False
    never = asyncio.get_running_loop().create_future()

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        return await never

    async def send(message):
        sent.append(message)

    await asgi.gateway_application(http_scope(path), receive, send)
    return sent


@pytest.fixture
def direct_view(monkeypatch):
    responses = []

    async def view(request, started):
        response = HttpResponse(b"{}", content_type="application/json")
        response.released = []
        response._resource_closers.append(lambda: response.released.append("held by the view"))
        responses.append(response)
        return response

    monkeypatch.setitem(
        asgi.DIRECT_ROUTES, ("POST", DIRECT_PATH), asgi.DirectRoute(view=view, start=lambda scope: None)
    )
    return responses


@pytest.fixture
def finished_signals():
    received = []

    def receiver(sender, **kwargs):
        received.append(sender)

    signals.request_finished.connect(receiver)
    yield received
    signals.request_finished.disconnect(receiver)


def test_a_direct_view_response_is_closed_without_request_finished(direct_view, finished_signals):
    sent = asyncio.run(_serve(DIRECT_PATH))

    assert sent[0]["status"] == 200
    (response,) = direct_view
    assert response.closed
    assert response.released == ["held by the view"]
    assert response._resource_closers == []
    assert finished_signals == []


@pytest.mark.django_db
def test_a_resolved_request_still_sends_request_finished(finished_signals):
    sent = asyncio.run(_serve("/v1/no-such-endpoint"))

    assert sent[0]["status"] == 404
    assert finished_signals == [asgi.GatewayASGIHandler]


def test_a_start_that_fails_leaves_the_view_to_do_the_work_itself(monkeypatch, caplog):
    given = []

    def start(scope):
        raise RuntimeError("REDIS_URL is malformed")

    async def view(request, started):
        given.append(started)
        return HttpResponse(b"{}", content_type="application/json")

    monkeypatch.setitem(asgi.DIRECT_ROUTES, ("POST", DIRECT_PATH), asgi.DirectRoute(view=view, start=start))

    sent = asyncio.run(_serve(DIRECT_PATH))

    assert sent[0]["status"] == 200
    assert given == [None]
    assert "the work started ahead of the view failed" in caplog.text


def test_what_a_route_started_is_cancelled_once_its_view_is_done(monkeypatch):
    futures = []

    def start(scope):
        futures.append(asyncio.get_running_loop().create_future())
        return futures[-1]

    async def view(request, started):
        return HttpResponse(b"{}", content_type="application/json")

    monkeypatch.setitem(asgi.DIRECT_ROUTES, ("POST", DIRECT_PATH), asgi.DirectRoute(view=view, start=start))

    asyncio.run(_serve(DIRECT_PATH))

    assert futures[0].cancelled()


def test_a_route_starts_its_work_only_once_the_whole_body_has_arrived(monkeypatch):
    events = []

    def start(scope):
        events.append("started")

    async def view(request, started):
        events.append(f"view read {request.body!r}")
        return HttpResponse(b"{}", content_type="application/json")

    monkeypatch.setitem(asgi.DIRECT_ROUTES, ("POST", DIRECT_PATH), asgi.DirectRoute(view=view, start=start))

    async def serve_in_two_parts():
        parts = [b'{"a":', b" 1}"]
        never = asyncio.get_running_loop().create_future()

        async def receive():
            if not parts:
                return await never
            await asyncio.sleep(0.01)
            events.append("part")
            return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)}

        async def send(message):
            pass

        await asgi.gateway_application(http_scope(DIRECT_PATH), receive, send)

    asyncio.run(serve_in_two_parts())

    assert events == ["part", "part", "started", "view read b'{\"a\": 1}'"]
