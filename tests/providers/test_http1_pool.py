"""routing.providers.http1's connection and pool on their own, with a transport that records what it is asked to do:
the orderings a loopback server cannot produce on demand (bytes that arrive together, a waiter cancelled in the turn
it was woken)."""

import asyncio

from routing.providers import http1

ORIGIN = http1.Origin("http", "provider.test", 80, None)


class RecordingTransport:
    def __init__(self):
        self.written: list[bytes] = []
        self.reading = True
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def connection_on(loop) -> tuple[http1.Connection, RecordingTransport]:
    connection, transport = http1.Connection(loop), RecordingTransport()
    connection.connection_made(transport)
    return connection, transport


def pool_of(loop, max_connections: int) -> http1.ConnectionPool:
    pool = http1.ConnectionPool(max_connections=max_connections, ssl_context=None)

    async def connect(loop, origin):
        return connection_on(loop)[0]

    pool._connect = connect
    return pool


def test_bytes_after_the_answer_in_the_same_read_are_not_read_into_it():
    async def scenario():
        connection, transport = connection_on(asyncio.get_running_loop())
        connection.send(b"POST / HTTP/1.1\r\n\r\n", streaming=False)
        connection.data_received(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" + b"HTTP/1.1 500 Boom\r\nContent-Length: 5\r\n\r\nhello"
        )
        return connection.status, connection.headers, await connection.body(1), transport.closing

    assert asyncio.run(scenario()) == (200, [(b"Content-Length", b"2")], b"hi", True)


def test_a_stream_closed_while_reading_is_paused_is_not_pooled():
    """The answer came whole while the reader was behind, and the stream was closed early: a paused connection would
    not see its server close it, so it is closed rather than kept for the next request."""

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pool_of(loop, 1)
        connection = await pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=1)
        transport = connection.transport
        connection.send(b"POST / HTTP/1.1\r\n\r\n", streaming=True)
        size = http1.STREAM_HIGH_WATER + 1000
        connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for start in range(0, size, 65536):
            connection.data_received(b"a" * min(65536, size - start))
        paused = not transport.reading
        await connection.body_piece(1)
        pool.release(ORIGIN, connection)
        again = await pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=1)
        return paused, connection.complete, transport.closing, again is connection, pool._open

    assert asyncio.run(scenario()) == (True, True, True, False, 1)


def test_a_full_pool_closes_an_idle_connection_of_another_origin_even_on_a_tie():
    """Connections to two origins given back in the same loop turn (uvloop's clock moves by milliseconds): a third
    origin's request closes one of them, whichever."""
    other = http1.Origin("http", "other.test", 80, None)
    third = http1.Origin("http", "third.test", 80, None)

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pool_of(loop, 2)
        first = await pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=1)
        second = await pool.acquire(other, connect_timeout=1, pool_timeout=1)
        for origin, connection in ((ORIGIN, first), (other, second)):
            connection.complete = connection.keep_alive = True
            pool.release(origin, connection)
        first.idle_since = second.idle_since = loop.time()
        await pool.acquire(third, connect_timeout=1, pool_timeout=0.1)
        return pool._open, first.closed or second.closed

    assert asyncio.run(scenario()) == (2, True)


def test_a_chunked_bodys_trailers_are_not_read_as_headers():
    async def scenario():
        connection, _ = connection_on(asyncio.get_running_loop())
        connection.send(b"POST / HTTP/1.1\r\n\r\n", streaming=False)
        connection.data_received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            b"2\r\n{}\r\n0\r\nContent-Type: text/html\r\n\r\n"
        )
        return connection.headers, await connection.body(1)

    headers, body = asyncio.run(scenario())
    assert headers == [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"application/json")] and body == b"{}"


def test_a_waiter_cancelled_in_the_turn_it_was_woken_passes_the_slot_on():
    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pool_of(loop, 1)
        held = await pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=5)
        first = asyncio.ensure_future(pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=5))
        second = asyncio.ensure_future(pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=1))
        await asyncio.sleep(0.01)
        pool.discard(held)
        first.cancel()
        got = await second
        return got is not None, pool._open

    assert asyncio.run(scenario()) == (True, 1)


def test_the_pool_timeout_counts_from_the_first_wait():
    """A waiter woken for a slot that someone else takes waits on only for what is left of its timeout: it gives up
    while the slot keeps changing hands every 0.1 s (a timeout counted afresh at each wake never would)."""

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pool_of(loop, 1)
        held = await pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=1)
        waiter = asyncio.ensure_future(pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=0.2))
        for _ in range(6):
            await asyncio.sleep(0.1)
            # The slot is given back and taken again in the same turn, before the woken waiter runs.
            pool.discard(held)
            held = await pool.acquire(ORIGIN, connect_timeout=1, pool_timeout=1)
        done = waiter.done()
        waiter.cancel()
        return done and isinstance(waiter.exception(), TimeoutError)

    assert asyncio.run(scenario())
