"""Shared Redis clients, or None where REDIS_URL is unset (the embedded default runs without Redis).

Callers must handle None with their documented fallback (database, or in-process).
"""

import asyncio
import hashlib
import weakref
from collections import deque
from collections.abc import Sequence
from functools import lru_cache

import hiredis
import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.event_loops import PerEventLoop


@lru_cache(maxsize=2)
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def sync_redis() -> redis.Redis | None:
    return _sync_client(settings.REDIS_URL) if settings.REDIS_URL else None


def _async_client(loop: asyncio.AbstractEventLoop) -> aioredis.Redis:
    # Blocking: a burst of concurrent requests waits briefly for a connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=100, timeout=2, socket_timeout=2, socket_connect_timeout=2
    )
    return aioredis.Redis(connection_pool=pool)


# One client (and connection pool) per event loop: a pool cannot be shared between loops.
_async_clients = PerEventLoop(_async_client)


def async_redis() -> aioredis.Redis | None:
    return _async_clients.get() if settings.REDIS_URL else None


def redis_persistence_problem(client: redis.Redis) -> str:
    """What a restart of this Redis would lose, when it runs without AOF; '' when it persists, or will not say
    (CONFIG refused, as on some managed services)."""
    try:
        appendonly = client.config_get("appendonly").get("appendonly")
    except RedisError:
        return ""
    if appendonly in ("yes", b"yes"):
        return ""
    return (
        "Redis (REDIS_URL) runs without AOF (appendonly no): a restart loses the ledger records not yet drained into "
        "Postgres, and budget counters restart from the ledger without the requests in flight. Run it with "
        "--appendonly yes --appendfsync everysec (README, Production deployment)."
    )


# What ``hiredis.Reader.gets`` answers while a reply is incomplete (RESP3 has a False of its own).
_INCOMPLETE = object()


class _Pipe(asyncio.Protocol):
    """One connection to Redis that a loop's batches share. A batch is written the moment it is flushed, and the
    replies, which Redis sends in the order it read the commands, are handed to their callers as they arrive: no
    connection borrowed from the pool for each batch, no task and no read per batch (redis-py's pipeline cost a
    worker about 5% of its loop on top of the socket write, docs/performance.md). Out-of-band push messages (RESP3)
    are not replies and are skipped."""

    def __init__(self, connection: aioredis.Connection, client: aioredis.Redis, loop: asyncio.AbstractEventLoop):
        # redis-py's connection made the socket and the handshake (TLS, AUTH, SELECT); its transport is taken over
        # here.
        self.connection = connection
        self.callbacks = client.response_callbacks
        self.loop = loop
        self.timeout = connection.socket_timeout
        encoder = connection.encoder
        decoding = {"encoding": encoder.encoding, "errors": encoder.encoding_errors} if encoder.decode_responses else {}
        self.reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error, notEnoughData=_INCOMPLETE, **decoding
        )
        # (caller's future, command name, when it was written), in the order written.
        self.waiting: deque[tuple[asyncio.Future, str | bytes, float]] = deque()
        self.failure: RedisError | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.transport = connection._writer.transport
        # Told when the connection closes, so redis-py's disconnect (the pool's, when the client closes) completes.
        self.stream_protocol = self.transport.get_protocol()
        self.transport.set_protocol(self)

    @property
    def is_open(self) -> bool:
        return self.failure is None

    def send(self, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        """Write the batch's commands; one that cannot be packed fails alone, before anything is written, so each
        reply still finds its own caller."""
        packed, sent = [], []
        for args, future in batch:
            try:
                # hiredis's packer: the same bytes as redis-py's, five times faster (bench/hot_path_parts.py).
                packed.append(hiredis.pack_command(args))
            except Exception as error:
                if not future.done():
                    future.set_exception(DataError(f"{args[0]}: {error}"))
                continue
            sent.append((future, args[0]))
        if not sent:
            return
        written = self.loop.time()
        self.waiting.extend((future, command, written) for future, command in sent)
        self.transport.write(b"".join(packed))
        if self.watchdog is None and self.timeout:
            self.watchdog = self.loop.call_later(self.timeout, self._check_overdue)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except InvalidResponse as error:
                self.close(error)
                return
            except Exception as error:
                # A reply read but not decoded (decode_responses, bytes that are not text): its caller's error.
                reply = DataError(f"the reply could not be decoded: {error}")
            if reply is _INCOMPLETE:
                return
            if isinstance(reply, hiredis.PushNotification):
                continue
            if not self.waiting:
                # A reply nobody asked for (a RESP3 attribute, say): the replies can no longer be matched.
                self.close(InvalidResponse("a Redis reply that no command waits for"))
                return
            future, command, _ = self.waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
                continue
            callback = self.callbacks.get(command)
            try:
                future.set_result(callback(reply) if callback is not None else reply)
            except Exception as error:
                future.set_exception(error)

    def _check_overdue(self) -> None:
        """As redis-py's socket timeout: a reply overdue fails every command still waiting, and the connection."""
        self.watchdog = None
        if not self.waiting:
            return
        overdue_at = self.waiting[0][2] + self.timeout
        if self.loop.time() >= overdue_at:
            self.close(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self.watchdog = self.loop.call_at(overdue_at, self._check_overdue)

    def close(self, failure: RedisError) -> None:
        if self.failure is None:
            self.failure = failure
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            self.failure = RedisConnectionError("Connection closed by server.")
        if self.watchdog is not None:
            self.watchdog.cancel()
        while self.waiting:
            future, _, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.failure)
        self.stream_protocol.connection_lost(exc)

    async def release(self, pool: aioredis.ConnectionPool) -> None:
        """Give the closed connection back to its client's pool, which reconnects it when it lends it again."""
        await self.connection.disconnect(nowait=True)
        await pool.release(self.connection)


class _CommandBatcher:
    """Commands that a loop's requests issue in one turn of the loop, sent to Redis together: one write for the lot
    on one shared connection (``_Pipe``) instead of one each. On a busy gateway a socket write per command was a
    fifth of a worker's CPU (docs/performance.md). Each command is still atomic on its own and keeps its own result
    or error; commands of one caller awaited one after another keep their order. A connection failure fails the
    commands waiting on it together, as it would have failed each of them, and the next turn connects again. A
    command queued is sent even if its caller is cancelled before the turn's write, as one written at once would
    have been: a settle or a ledger record must not be taken back (a reservation whose caller went away is released
    by billing.budgets.reservations)."""

    def __init__(self, client: aioredis.Redis, loop: asyncio.AbstractEventLoop):
        # Weak: the batcher lives as long as its client, which PerEventLoop forgets with its loop.
        self.client_ref = weakref.ref(client)
        self.loop = loop
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.pipe: _Pipe | None = None
        # Batches flushed while the connection is being made, written in order once it is.
        self.unsent: list[list[tuple[tuple, asyncio.Future]]] = []
        self.connecting: asyncio.Task | None = None

    def execute(self, *args) -> asyncio.Future:
        if not self.pending:
            self.loop.call_soon(self._flush)
        future = self.loop.create_future()
        self.pending.append((args, future))
        return future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if self.pipe is not None and self.pipe.is_open:
            self.pipe.send(batch)
            return
        self.unsent.append(batch)
        if self.connecting is None:
            self.connecting = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            client = self.client_ref()
            if client is None:
                raise RedisConnectionError("the Redis client was closed before the command was sent")
            pool = client.connection_pool
            if self.pipe is not None:
                closed, self.pipe = self.pipe, None
                await closed.release(pool)
            # Borrowed from the client's pool for as long as it works: closing the client closes it.
            self.pipe = _Pipe(await pool.get_connection(), client, self.loop)
        except BaseException as error:
            failure = error if isinstance(error, RedisError) else RedisConnectionError(str(error) or repr(error))
            for batch in self.unsent:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
            self.unsent = []
            if not isinstance(error, Exception):
                raise
        else:
            for batch in self.unsent:
                self.pipe.send(batch)
            self.unsent = []
        finally:
            self.connecting = None


_batchers: weakref.WeakKeyDictionary[aioredis.Redis, _CommandBatcher] = weakref.WeakKeyDictionary()


# Commands that change the state of the connection they are sent on, or take it over, which the loop's callers
# share; and CLIENT's subcommands that do (`_changes_connection`).
CONNECTION_STATE_COMMANDS = frozenset(
    {"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "SELECT", "SWAPDB", "HELLO", "AUTH", "RESET", "QUIT", "MONITOR"}
    | {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"}
    | {"READONLY", "READWRITE", "SYNC", "PSYNC", "REPLCONF"}
)
CONNECTION_STATE_CLIENT_COMMANDS = frozenset({"REPLY", "TRACKING", "CACHING", "SETNAME", "SETINFO", "NO-EVICT"})


def _word(value) -> str:
    return (bytes(value).decode(errors="replace") if isinstance(value, bytes | memoryview) else str(value)).upper()


def _changes_connection(args: tuple) -> bool:
    if not args:
        return True
    name = _word(args[0])
    if name == "CLIENT":
        return len(args) > 1 and _word(args[1]) in CONNECTION_STATE_CLIENT_COMMANDS
    return name in CONNECTION_STATE_COMMANDS


async def redis_command(client: aioredis.Redis, *args):
    """``client.execute_command(*args)``, sent along with the other commands issued in the same turn of the loop.
    Raises what the command would raise (RedisError and its kinds).

    For short commands only: they share one connection, so a blocking command (BLPOP, XREAD BLOCK, WAIT) holds up
    every command behind it, up to the client's ``socket_timeout``; one that changes the connection's state
    (`_changes_connection`) is refused. Use the client itself for those."""
    return await redis_command_queued(client, *args)


def redis_command_queued(client: aioredis.Redis, *args) -> asyncio.Future:
    """``redis_command`` queued now, its reply awaited later: the command leaves with this turn's batch while the
    caller goes on with work that does not need the reply. Await the future, or cancel it, so a failure is not left
    unread."""
    if _changes_connection(args):
        raise DataError(f"{args[:2]} changes the shared connection's state: send it with the client, not redis_command")
    batcher = _batchers.get(client)
    if batcher is None:
        batcher = _batchers[client] = _CommandBatcher(client, asyncio.get_running_loop())
    return batcher.execute(*args)


class RedisScript:
    """A Lua script called by its SHA1 (EVALSHA): the source crosses the wire, and is compiled, only when the server
    does not have it yet (first call, or after a restart or SCRIPT FLUSH). Sent with the loop's other commands."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def run(self, client: aioredis.Redis, keys: Sequence, args: Sequence):
        try:
            return await redis_command(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis_command(client, "EVAL", self.source, len(keys), *keys, *args)
