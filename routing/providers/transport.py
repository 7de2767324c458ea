"""httpx's request and response types over the gateway's own HTTP/1.1 pool (routing/providers/http1.py), for the
calls to providers.

Adapters build and read ``httpx`` requests and responses; the connections underneath are http1's. httpcore's pool,
profiled at concurrency 32, spent about a third of the gateway's event loop on each request (it polls every idle
connection's socket to see whether it expired); aiohttp's client, which came next, about 280 µs a call more than the
bytes on the wire need (docs/performance.md, "A lean client for the providers"). Failures are raised as the httpx
exceptions the adapters catch.
"""

import weakref
from collections.abc import AsyncIterator

import httpx

from routing.providers.http1 import (
    DEFAULT_PORTS,
    Connection,
    ConnectionFailed,
    ConnectionPool,
    Disconnected,
    Origin,
    ProtocolFailure,
    origin_for,
)


def _as_httpx_error(exc: BaseException, request: httpx.Request, *, reading: bool) -> httpx.TransportError:
    if isinstance(exc, TimeoutError):
        timeout = httpx.ReadTimeout if reading else httpx.ConnectTimeout
        return timeout(str(exc) or ("read timeout" if reading else "connect timeout"), request=request)
    if isinstance(exc, ConnectionFailed):
        return httpx.ConnectError(str(exc), request=request)
    if isinstance(exc, ProtocolFailure) and not reading:
        return httpx.LocalProtocolError(str(exc), request=request)
    if reading or isinstance(exc, (Disconnected, ProtocolFailure)):
        return httpx.RemoteProtocolError(str(exc) or exc.__class__.__name__, request=request)
    return httpx.NetworkError(str(exc) or exc.__class__.__name__, request=request)


def _request_bytes(request: httpx.Request, origin: Origin) -> bytes:
    """The request as it goes on the wire: its head (the absolute URL as target through a plain HTTP proxy), then
    its body. A header that would break a line is refused: it could smuggle another header or request."""
    url = request.url
    target = url.raw_path
    if origin.proxy is not None and origin.scheme == "http":
        target = b"http://" + url.netloc + target
    headers = request.headers.raw
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in headers]
    if origin.proxy is not None and origin.scheme == "http" and origin.proxy.authorization is not None:
        lines.append(b"Proxy-Authorization: " + origin.proxy.authorization)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    breaks = len(lines) + 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\0" in head:
        raise ProtocolFailure("a request header holds a line break or a NUL byte")
    return head + request.content


class _ResponseStream(httpx.AsyncByteStream):
    """A streamed response's body, read as it arrives; its connection goes back to the pool once read to the end.
    One dropped without ``aclose`` (a caller's bug) gives its connection's place in the pool back when collected."""

    def __init__(self, pool: ConnectionPool, origin: Origin, connection: Connection, request: httpx.Request):
        self._pool = pool
        self._origin = origin
        self._connection: Connection | None = connection
        self._request = request
        self._abandoned = weakref.finalize(self, _give_back_abandoned, pool, connection)
        self._abandoned.atexit = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read_timeout = _timeouts(self._request).get("read")
        while self._connection is not None:
            try:
                piece = await self._connection.body_piece(read_timeout)
            except (TimeoutError, OSError, ProtocolFailure) as exc:
                raise _as_httpx_error(exc, self._request, reading=True) from exc
            if piece is None:
                return
            yield piece

    async def aclose(self) -> None:
        # A body read to the end returns its connection to the pool; one cut short closes it.
        if self._connection is not None:
            self._abandoned.detach()
            self._pool.release(self._origin, self._connection)
            self._connection = None


def _give_back_abandoned(pool: ConnectionPool, connection: Connection) -> None:
    """The finalizer runs in whichever thread collects the stream: the pool is the loop's."""
    if not connection.loop.is_closed():
        connection.loop.call_soon_threadsafe(pool.discard, connection)


def _timeouts(request: httpx.Request) -> dict:
    return request.extensions.get("timeout") or {}


class Http1Transport(httpx.AsyncBaseTransport):
    """One pool per transport, and one transport per event loop (``base.upstream_transport``)."""

    def __init__(self, *, max_connections: int):
        self._max_connections = max_connections
        self._pool: ConnectionPool | None = None
        self._origins: dict[tuple[str, str, int], Origin] = {}

    def pool(self) -> ConnectionPool:
        if self._pool is None:
            # httpx's TLS context: certifi's CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR when set.
            self._pool = ConnectionPool(max_connections=self._max_connections, ssl_context=httpx.create_ssl_context())
        return self._pool

    def _origin(self, url: httpx.URL) -> Origin:
        """Where the URL's connections go, with HTTP(S)_PROXY and NO_PROXY from the environment read once per
        scheme, host and port (reading them walks the whole environment)."""
        key = (url.scheme, url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS.get(url.scheme, 80))
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = origin_for(*key)
        return origin

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.send(request, stream=True)

    async def send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """The response; unless ``stream``, with its body read (and the connection back in the pool), which spares
        httpx's asynchronous reading of it."""
        timeouts = _timeouts(request)
        pool = self.pool()
        try:
            origin = self._origin(request.url)
            data = _request_bytes(request, origin)
            connection = await pool.acquire(
                origin, connect_timeout=timeouts.get("connect"), pool_timeout=timeouts.get("pool")
            )
        except (TimeoutError, OSError, ProtocolFailure) as exc:
            raise _as_httpx_error(exc, request, reading=False) from exc
        read_timeout = timeouts.get("read")
        try:
            connection.send(data, streaming=stream)
            if stream:
                await connection.head(read_timeout)
            else:
                content = await connection.body(read_timeout)
        except BaseException as exc:
            pool.discard(connection)
            if isinstance(exc, (TimeoutError, OSError, ProtocolFailure)):
                if connection.head_complete and connection.status >= 400:
                    # An error answer whose body did not arrive whole keeps its status and Retry-After.
                    return httpx.Response(connection.status, headers=connection.headers, request=request)
                raise _as_httpx_error(exc, request, reading=True) from exc
            raise
        if stream:
            body = _ResponseStream(pool, origin, connection, request)
            return httpx.Response(connection.status, headers=connection.headers, stream=body, request=request)
        pool.release(origin, connection)
        try:
            return httpx.Response(connection.status, headers=connection.headers, content=content, request=request)
        except httpx.DecodingError:
            if connection.status < 400:
                raise
            # An error answer keeps its status and Retry-After; its body, which does not decode, is left out.
            return httpx.Response(connection.status, headers=connection.headers, request=request)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
