"""Calls to OpenAI-compatible upstreams over a pooled ``httpx.AsyncClient``.

One client per event loop: connections are reused across requests, and a client is never
shared between loops (tests run several).
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
from django.conf import settings

from routing.catalog import ProviderEntry

_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


class UpstreamError(Exception):
    """The upstream could not give an answer. ``upstream_status`` is its HTTP status when it sent one."""

    code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, elapsed_ms: int = 0):
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.elapsed_ms = elapsed_ms


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamConnectionError(UpstreamError):
    code = "upstream_connection_error"


class UpstreamStreamTruncated(UpstreamError):
    """The stream ended without OpenAI's closing ``data: [DONE]``."""

    code = "upstream_stream_truncated"


class UpstreamRejected(UpstreamError):
    """The upstream answered with an error status (4xx or 5xx)."""

    def __init__(self, message: str, *, upstream_status: int, error_body: dict | None, elapsed_ms: int):
        super().__init__(message, upstream_status=upstream_status, elapsed_ms=elapsed_ms)
        self.error_body = error_body


@dataclass(slots=True)
class UpstreamReply:
    body: dict
    raw: bytes
    elapsed_ms: int


def upstream_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        for stale_loop in [known for known in _clients if known.is_closed()]:
            del _clients[stale_loop]
        limit = settings.LLMOPS_UPSTREAM_MAX_CONNECTIONS
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            timeout=httpx.Timeout(60.0, connect=5.0),
        )
        _clients[loop] = client
    return client


def _request(provider: ProviderEntry, body: dict) -> httpx.Request:
    headers = {"content-type": "application/json"}
    if provider.api_key:
        headers["authorization"] = f"Bearer {provider.api_key}"
    return upstream_client().build_request(
        "POST",
        f"{provider.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers=headers,
        timeout=httpx.Timeout(provider.timeout_seconds, connect=min(provider.timeout_seconds, 5.0)),
    )


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _rejection(provider: ProviderEntry, status: int, content: bytes, started: float) -> UpstreamRejected:
    try:
        error_body = orjson.loads(content)
        message = error_body["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        error_body, message = None, content[:200].decode(errors="replace")
    return UpstreamRejected(
        f"provider {provider.name} answered {status}: {message}",
        upstream_status=status,
        error_body=error_body,
        elapsed_ms=_elapsed_ms(started),
    )


async def _send(provider: ProviderEntry, request: httpx.Request, *, stream: bool, started: float) -> httpx.Response:
    try:
        return await upstream_client().send(request, stream=stream)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(
            f"provider {provider.name} did not answer within {provider.timeout_seconds:g}s",
            elapsed_ms=_elapsed_ms(started),
        ) from exc
    except httpx.TransportError as exc:
        raise UpstreamConnectionError(
            f"cannot reach provider {provider.name}: {exc.__class__.__name__}", elapsed_ms=_elapsed_ms(started)
        ) from exc


async def chat_completion(provider: ProviderEntry, body: dict) -> UpstreamReply:
    started = time.perf_counter()
    response = await _send(provider, _request(provider, body), stream=False, started=started)
    if response.status_code >= 400:
        raise _rejection(provider, response.status_code, response.content, started)
    try:
        reply = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(
            f"provider {provider.name} sent a body that is not JSON", elapsed_ms=_elapsed_ms(started)
        ) from exc
    return UpstreamReply(body=reply, raw=response.content, elapsed_ms=_elapsed_ms(started))


class UpstreamStream:
    """An open streaming response. Iterate ``events()`` for raw SSE event blocks; always ``aclose()``."""

    def __init__(self, provider: ProviderEntry, response: httpx.Response, started: float):
        self.provider = provider
        self.response = response
        self.started = started
        self.first_byte_ms: int | None = None

    async def events(self) -> AsyncIterator[str]:
        lines: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if self.first_byte_ms is None:
                    self.first_byte_ms = _elapsed_ms(self.started)
                if line:
                    lines.append(line)
                elif lines:
                    yield "\n".join(lines)
                    lines = []
            if lines:
                yield "\n".join(lines)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(
                f"provider {self.provider.name} stalled mid-stream", elapsed_ms=_elapsed_ms(self.started)
            ) from exc
        except httpx.TransportError as exc:
            raise UpstreamConnectionError(
                f"provider {self.provider.name} broke off the stream", elapsed_ms=_elapsed_ms(self.started)
            ) from exc

    def elapsed_ms(self) -> int:
        return _elapsed_ms(self.started)

    async def aclose(self) -> None:
        await self.response.aclose()


async def open_chat_stream(provider: ProviderEntry, body: dict) -> UpstreamStream:
    started = time.perf_counter()
    response = await _send(provider, _request(provider, body), stream=True, started=started)
    if response.status_code >= 400:
        content = await response.aread()
        await response.aclose()
        raise _rejection(provider, response.status_code, content, started)
    return UpstreamStream(provider, response, started)
