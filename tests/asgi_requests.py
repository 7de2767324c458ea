"""ASGI messages for tests that call an ASGI application directly, with no server in between."""

import asyncio
from collections.abc import Awaitable, Callable, Iterable


def http_scope(path: str, *, headers: Iterable[tuple[bytes, bytes]] = ()) -> dict:
    """An HTTP/1.1 POST of JSON to ``path`` on ``testserver`` from loopback; ``headers`` follow Host and
    Content-Type."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 5555),
        "server": ("testserver", 80),
    }


def authorized_body_headers(key: str, raw: bytes) -> list[tuple[bytes, bytes]]:
    """For ``http_scope``: the Content-Length of the body ``raw`` and the API key ``key`` as a bearer token."""
    return [(b"content-length", str(len(raw)).encode()), (b"authorization", f"Bearer {key}".encode())]


def body_then_disconnect(raw: bytes, leave: asyncio.Event) -> Callable[[], Awaitable[dict]]:
    """An ASGI ``receive``: the whole body ``raw`` at once, then the client's ``http.disconnect`` once ``leave`` is
    set."""
    given = False

    async def receive() -> dict:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    return receive
