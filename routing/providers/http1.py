"""A lean HTTP/1.1 client for the calls to providers: kept-alive connections pooled per origin, httptools' response
parser (the one uvicorn's server uses), TLS by the event loop, and HTTP proxies (absolute URLs, CONNECT for HTTPS).

It replaced aiohttp's client, which cost about 280 µs of the event loop's CPU a provider call more than a request
written straight to a kept-alive connection (docs/performance.md, "A lean client for the providers"): request and
response objects, tracing hooks, and a timer moved on every read. Only what provider calls need is here: one request
at a time on a connection, a body as bytes, a response read whole or streamed. Failures are the ``ConnectionFailed``,
``Disconnected``, ``ProtocolFailure`` and ``TimeoutError`` below; the transport (routing/providers/transport.py) turns
them into httpx's exceptions.
"""

import asyncio
import base64
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import httptools

# An idle connection older than this is closed rather than reused: servers close idle connections on their own
# schedule, and a request written as the server closes fails (aiohttp's default).
KEEPALIVE_SECONDS = 15.0
# Reading pauses while this many bytes of a streamed body wait for the reader.
STREAM_HIGH_WATER = 256 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}


class ConnectionFailed(OSError):
    """No connection: refused, unresolvable, a TLS handshake or certificate that failed, or a proxy that refused."""


class Disconnected(ConnectionError):
    """The server closed the connection before the response was complete."""


class ProtocolFailure(Exception):
    """The server's bytes are not an HTTP/1.1 response, or a header the client would send is unsafe."""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    # The Proxy-Authorization value, from credentials in the proxy's URL.
    authorization: bytes | None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a connection goes: the provider's scheme, host and port, and the proxy it passes, if any."""

    scheme: str
    host: str
    port: int
    proxy: Proxy | None


def proxy_from_url(url: str) -> Proxy:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ConnectionFailed(f"only http:// proxies are supported, not {parts.scheme}://")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(credentials)
    return Proxy(parts.hostname or "", parts.port or 80, authorization)


def environment_proxy(scheme: str, host: str) -> Proxy | None:
    """HTTP_PROXY / HTTPS_PROXY for the scheme unless NO_PROXY names the host, as httpx's client applies them."""
    proxy_url = getproxies_environment().get(scheme)
    if not proxy_url or proxy_bypass_environment(host):
        return None
    return proxy_from_url(proxy_url)


class Connection(asyncio.Protocol):
    """One connection and the one response it is reading. The parser's callbacks fill the response; ``wait`` returns
    once there is something for the reader (the head, a piece of the body, the end or a failure)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_progress = 0.0
        self._tunnel_reply: bytearray | None = None
        self._waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_complete = False
        self.complete = False
        self.keep_alive = False
        self.failure: BaseException | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self._until_close = False
        self._reading_paused = False
        self.streaming = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_progress = self.loop.time()
        if self._tunnel_reply is not None:
            self._tunnel_reply += data
            self._wake()
            return
        if self.complete:
            # Bytes on an idle connection answer nothing that was asked: it cannot be trusted with a request.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ProtocolFailure(f"the server's response cannot be parsed: {error}"))
            self.close()

    def eof_received(self) -> bool:
        self.closed = True
        if self.head_complete and self._until_close and not self.complete:
            self.complete = True
            self._wake()
        else:
            self._fail(Disconnected("the server closed the connection before the response was complete"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(Disconnected(f"the connection was lost: {exc}" if exc else "the server closed the connection"))

    def resume_writing(self) -> None:
        # A body the server is still taking in is progress: the read timer counts from here.
        self.last_progress = self.loop.time()

    # httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:
            return
        self.head_complete = True
        names = {name.lower(): value for name, value in self.headers}
        chunked = b"chunked" in names.get(b"transfer-encoding", b"").lower()
        self._until_close = b"content-length" not in names and not chunked and self.status not in (204, 304)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.streaming and self.buffered > STREAM_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            # An informational response (100 Continue): the real one follows on the same connection.
            self.headers = []
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    # For the client

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, failure: BaseException) -> None:
        if self.failure is None and not self.complete:
            self.failure = failure
        self._wake()

    def usable(self, now: float) -> bool:
        return not self.closed and now - self.idle_since < KEEPALIVE_SECONDS

    def send(self, data: bytes, *, streaming: bool) -> None:
        """Write a request and get ready for its response; a ``streaming`` one is read piece by piece, and reading
        pauses while the reader is behind."""
        if self.complete or self.head_complete:
            self._reset()
        self.streaming = streaming
        self.last_progress = self.loop.time()
        self.transport.write(data)

    async def wait(self, read_timeout: float | None) -> None:
        """Until the parser has news or the connection fails; TimeoutError when nothing arrived (and nothing was
        written) for ``read_timeout`` seconds."""
        if self.failure is not None:
            raise self.failure
        waiter = self._waiter = self.loop.create_future()
        timer = None
        if read_timeout is not None:
            timer = self.loop.call_at(self.last_progress + read_timeout, self._stalled, read_timeout)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self.failure is not None:
            raise self.failure

    def _stalled(self, read_timeout: float) -> None:
        """The read timer: a stall when nothing came since it was set, else set again from the last progress."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        deadline = self.last_progress + read_timeout
        if self.loop.time() >= deadline:
            waiter.set_exception(TimeoutError(f"nothing received for {read_timeout:g}s"))
        else:
            timer = self.loop.call_at(deadline, self._stalled, read_timeout)
            waiter.add_done_callback(lambda _: timer.cancel())

    async def head(self, read_timeout: float | None) -> None:
        while not self.head_complete:
            await self.wait(read_timeout)

    async def body(self, read_timeout: float | None) -> bytes:
        while not self.complete:
            await self.wait(read_timeout)
        body = b"".join(self.chunks)
        self.chunks.clear()
        return body

    async def body_piece(self, read_timeout: float | None) -> bytes | None:
        """The next bytes of the body as they came, or None at its end."""
        while not self.chunks:
            if self.complete:
                return None
            await self.wait(read_timeout)
        piece = self.chunks.popleft()
        self.buffered -= len(piece)
        if self._reading_paused and self.buffered <= STREAM_HIGH_WATER // 4:
            self._reading_paused = False
            self.transport.resume_reading()
        return piece

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def tunnel(self, origin: Origin, ssl_context: ssl.SSLContext) -> None:
        """Through the proxy this connection reached, a CONNECT to the origin, then TLS with it."""
        authority = f"{origin.host}:{origin.port}".encode()
        lines = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
        if origin.proxy.authorization is not None:
            lines.append(b"Proxy-Authorization: " + origin.proxy.authorization)
        self._tunnel_reply = bytearray()
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        while b"\r\n\r\n" not in self._tunnel_reply:
            if self.closed:
                raise ConnectionFailed("the proxy closed the connection instead of opening a tunnel")
            await self.wait(None)
        status_line = bytes(self._tunnel_reply).split(b"\r\n", 1)[0]
        self._tunnel_reply = None
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"200":
            raise ConnectionFailed(f"the proxy refused the tunnel: {status_line[:80].decode('latin-1')}")
        self.transport = await self.loop.start_tls(self.transport, self, ssl_context, server_hostname=origin.host)


class ConnectionPool:
    """Kept-alive connections by origin, at most ``max_connections`` open at once in all; one pool per event loop.
    A request for a connection past the limit waits for one to be given back."""

    def __init__(self, *, max_connections: int, ssl_context: ssl.SSLContext):
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self._idle: dict[Origin, list[Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self, origin: Origin, *, connect_timeout: float | None, pool_timeout: float | None) -> Connection:
        """An idle connection to the origin (the one used last), else a new one. ``TimeoutError`` when no connection
        was free within ``pool_timeout`` or none opened within ``connect_timeout``."""
        loop = asyncio.get_running_loop()
        while True:
            idle = self._idle.get(origin)
            now = loop.time()
            while idle:
                connection = idle.pop()
                if connection.usable(now):
                    return connection
                self.discard(connection)
            if self._open >= self.max_connections and not self._close_one_idle():
                await self._slot_freed(loop, pool_timeout)
                continue
            self._open += 1
            try:
                async with asyncio.timeout(connect_timeout):
                    return await self._connect(loop, origin)
            except BaseException:
                self._open -= 1
                self._wake_waiter()
                raise

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> Connection:
        tls = self.ssl_context if origin.scheme == "https" else None
        host, port = (origin.host, origin.port) if origin.proxy is None else (origin.proxy.host, origin.proxy.port)
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(loop),
                host,
                port,
                ssl=tls if origin.proxy is None else None,
                server_hostname=host if tls is not None and origin.proxy is None else None,
            )
        except OSError as error:
            raise ConnectionFailed(f"cannot connect to {host}:{port}: {error}") from error
        if tls is not None and origin.proxy is not None:
            try:
                await connection.tunnel(origin, tls)
            except BaseException:
                connection.close()
                raise
        return connection

    async def _slot_freed(self, loop: asyncio.AbstractEventLoop, pool_timeout: float | None) -> None:
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(pool_timeout):
                await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _close_one_idle(self) -> bool:
        """Make room under the limit by closing the longest idle connection of any origin."""
        oldest = min(
            ((connections[0].idle_since, origin) for origin, connections in self._idle.items() if connections),
            default=None,
        )
        if oldest is None:
            return False
        self.discard(self._idle[oldest[1]].pop(0))
        return True

    def release(self, origin: Origin, connection: Connection) -> None:
        """Back to the pool if its response was read to the end and both sides keep it open; closed otherwise."""
        if connection.complete and connection.keep_alive and not connection.closed:
            connection.idle_since = connection.loop.time()
            self._idle.setdefault(origin, []).append(connection)
            self._wake_waiter()
        else:
            self.discard(connection)

    def discard(self, connection: Connection) -> None:
        connection.close()
        self._open -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
