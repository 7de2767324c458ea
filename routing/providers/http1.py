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
import logging
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import aiohappyeyeballs
import httptools

logger = logging.getLogger(__name__)

# An idle connection older than this is closed rather than reused: servers close idle connections on their own
# schedule, and a request written as the server closes fails (aiohttp's default).
KEEPALIVE_SECONDS = 15.0
# Reading pauses while this many bytes of a streamed body wait for the reader.
STREAM_HIGH_WATER = 256 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
# A host with IPv6 and IPv4 addresses: the next address is tried this long after the last one was (RFC 8305), so a
# route that drops IPv6 costs a quarter second, not the connect timeout.
HAPPY_EYEBALLS_DELAY = 0.25


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
    """Where a connection goes: the provider's scheme, host (ASCII: IDNA-encoded) and port, and the proxy it passes,
    if any. ``refusal``: why no connection can go there (a proxy setting the client cannot use)."""

    scheme: str
    host: str
    port: int
    proxy: Proxy | None
    refusal: str = ""

    @property
    def authority(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode("ascii")


def proxy_from_url(url: str) -> Proxy:
    """A proxy from its URL (``http://user:password@host:port``); ConnectionFailed for one the client cannot use."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ConnectionFailed(f"only http:// proxies are supported, not {parts.scheme}:// ({parts.hostname})")
    try:
        port = parts.port or 80
    except ValueError as error:
        raise ConnectionFailed(f"the proxy URL's port is not a port: {error}") from error
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(credentials)
    return Proxy(parts.hostname or "", port, authorization)


def origin_for(scheme: str, host: str, port: int) -> Origin:
    """The origin of a URL, with HTTP_PROXY / HTTPS_PROXY applied unless NO_PROXY names the host, as httpx's client
    applies them."""
    proxy_url = getproxies_environment().get(scheme)
    if not proxy_url or proxy_bypass_environment(host):
        return Origin(scheme, host, port, None)
    try:
        return Origin(scheme, host, port, proxy_from_url(proxy_url))
    except ConnectionFailed as refused:
        # The calls' errors name only the failure's kind: the operator reads the reason here, once per host.
        logger.error("calls to %s://%s:%s are refused: %s", scheme, host, port, refused)
        return Origin(scheme, host, port, None, refusal=str(refused))


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
        # What aiohttp's parser, which came before, also let through.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True, lenient_spaces_after_chunk_size=True)
        self._unasked = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_complete = False
        self.complete = False
        self.keep_alive = False
        self.failure: BaseException | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self._until_close = False
        self.reading_paused = False
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
            if not self._unasked:
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

    def on_message_begin(self) -> None:
        if self.complete:
            # More bytes after the answer, in the same read: they answer nothing that was asked, and the connection
            # cannot be trusted with another request. Raising stops the parser before they touch the answer.
            self._unasked = True
            raise ProtocolFailure("a response that nothing asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        # A chunked body's trailers come after the head: they are not the response's headers.
        if not self.head_complete:
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
        if self.streaming and self.buffered > STREAM_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
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
        return not self.closed and not self.transport.is_closing() and now - self.idle_since < KEEPALIVE_SECONDS

    def send(self, data: bytes, *, streaming: bool) -> None:
        """Write a request and get ready for its response; a ``streaming`` one is read piece by piece, and reading
        pauses while the reader is behind."""
        if self.complete or self.head_complete:
            self._reset()
        self.streaming = streaming
        self.last_progress = self.loop.time()
        try:
            self.transport.write(data)
        except RuntimeError as error:
            # uvloop's transport once its socket is gone (asyncio's drops the write and reports the loss).
            raise Disconnected(f"the connection closed before the request was written: {error}") from error

    async def wait(self, read_timeout: float | None) -> None:
        """Until the parser has news or the connection fails; TimeoutError when nothing arrived (and nothing was
        written) for ``read_timeout`` seconds."""
        if self.failure is not None:
            raise self.failure.with_traceback(None)
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
            raise self.failure.with_traceback(None)

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
        if self.reading_paused and self.buffered <= STREAM_HIGH_WATER // 4:
            self.reading_paused = False
            # The time reading was paused is the reader's, not the server's: the read timer counts from now.
            self.last_progress = self.loop.time()
            self.transport.resume_reading()
        return piece

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def tunnel(self, origin: Origin, ssl_context: ssl.SSLContext) -> None:
        """Through the proxy this connection reached, a CONNECT to the origin, then TLS with it; ConnectionFailed
        when the proxy refuses or closes, or the handshake fails."""
        lines = [b"CONNECT " + origin.authority + b" HTTP/1.1", b"Host: " + origin.authority]
        if origin.proxy.authorization is not None:
            lines.append(b"Proxy-Authorization: " + origin.proxy.authorization)
        self._tunnel_reply = bytearray()
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        try:
            while b"\r\n\r\n" not in self._tunnel_reply:
                await self.wait(None)
        except Disconnected as error:
            raise ConnectionFailed(f"the proxy closed the connection instead of opening a tunnel: {error}") from error
        status_line = bytes(self._tunnel_reply).split(b"\r\n", 1)[0]
        self._tunnel_reply = None
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not (parts[1].isdigit() and 200 <= int(parts[1]) < 300):
            raise ConnectionFailed(f"the proxy refused the tunnel: {status_line[:80].decode('latin-1')}")
        try:
            self.transport = await self.loop.start_tls(self.transport, self, ssl_context, server_hostname=origin.host)
        except OSError as error:
            raise ConnectionFailed(f"TLS with {origin.host} through the proxy failed: {error}") from error


class ConnectionPool:
    """Kept-alive connections by origin, at most ``max_connections`` open at once in all; one pool per event loop.
    A request for a connection past the limit waits for one to be given back (waiters are woken in the order they
    came; a request that arrives as a connection comes back may take it first)."""

    def __init__(self, *, max_connections: int, ssl_context: ssl.SSLContext):
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self._idle: dict[Origin, list[Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = False

    async def acquire(self, origin: Origin, *, connect_timeout: float | None, pool_timeout: float | None) -> Connection:
        """An idle connection to the origin (the one used last), else a new one. ``TimeoutError`` when no connection
        was free within ``pool_timeout`` or none opened within ``connect_timeout``."""
        if origin.refusal:
            raise ConnectionFailed(origin.refusal)
        loop = asyncio.get_running_loop()
        deadline = None if pool_timeout is None else loop.time() + pool_timeout
        waited = False
        while True:
            idle = self._idle.get(origin)
            now = loop.time()
            while idle:
                connection = idle.pop()
                if connection.usable(now):
                    return connection
                self.discard(connection)
            if self._open >= self.max_connections and not self._close_one_idle():
                # A waiter woken for a slot another took keeps its place at the front.
                await self._slot_freed(loop, deadline, first=waited)
                waited = True
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
        direct_tls = tls if origin.proxy is None else None
        try:
            addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
            try:
                _, connection = await loop.create_connection(
                    lambda: Connection(loop),
                    sock=sock,
                    ssl=direct_tls,
                    server_hostname=host if direct_tls is not None else None,
                )
            except BaseException:
                sock.close()
                raise
        except (OSError, RuntimeError) as error:
            # RuntimeError: uvloop's, for a socket it could not take.
            raise ConnectionFailed(f"cannot connect to {host}:{port}: {error}") from error
        if tls is not None and origin.proxy is not None:
            try:
                await connection.tunnel(origin, tls)
            except BaseException:
                connection.close()
                raise
        return connection

    async def _slot_freed(self, loop: asyncio.AbstractEventLoop, deadline: float | None, *, first: bool) -> None:
        waiter = loop.create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Woken, then cancelled or timed out in the same turn: the slot goes to the next in line.
                self._wake_waiter()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _close_one_idle(self) -> bool:
        """Make room under the limit by closing the longest idle connection of any origin (its slot is the
        caller's: nobody else is woken for it)."""
        oldest = min(
            (origin for origin, connections in self._idle.items() if connections),
            key=lambda origin: self._idle[origin][0].idle_since,
            default=None,
        )
        if oldest is None:
            return False
        self._idle[oldest].pop(0).close()
        self._open -= 1
        return True

    def release(self, origin: Origin, connection: Connection) -> None:
        """Back to the pool if its response was read to the end, its request written whole, reading is not paused
        (a server's close would go unseen) and both sides keep it open; closed otherwise."""
        reusable = (
            connection.complete
            and connection.keep_alive
            and not connection.closed
            and not connection.reading_paused
            and not self._closed
            and connection.transport.get_write_buffer_size() == 0
        )
        if reusable:
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
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
