"""The durable ledger, off the request's critical path.

With ``LLMOPS_LEDGER_MODE=stream`` (the default when ``REDIS_URL`` is set) the gateway appends each request's
UsageEvent to a Redis stream and awaits the XADD, so the record is in Redis before the response completes; a
drainer (``manage.py ledger_drain``) moves the stream into ``UsageRecord`` rows in bulk. Redis persistence is
what makes an appended record survive a Redis restart: run Redis with ``appendonly yes`` (``appendfsync
everysec`` may lose the last second on a crash of the Redis host, ``always`` loses nothing).

The drainer reads with a consumer group, inserts a batch idempotently (a row whose unique ``request_id`` is already
there is skipped), then acknowledges and deletes it, so an entry leaves the stream only once its row is committed.
On Postgres the batch is copied (COPY) into a temporary table and moved in one ``INSERT … ON CONFLICT DO NOTHING``:
the drainer, which shares the gateway's machine, spends about half the CPU on it that Django's ``bulk_create``
did, compiling and quoting every value in Python (0.09 against 0.17 ms a request, docs/performance.md). A drainer
killed between insert and acknowledgement re-reads its pending entries when it restarts (same consumer name) or
another drainer claims them once idle, and the replayed insert changes nothing. The stream's length is therefore the
backlog: events appended and not yet in Postgres.

Without Redis (the embedded demo), or while Redis cannot be reached, the row is written to the database
directly, as before.
"""

import asyncio
import functools
import hashlib
import logging
import socket
import threading
import time
from dataclasses import fields
from datetime import datetime
from decimal import Decimal

import orjson
import redis
from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from redis.exceptions import RedisError, ResponseError

from billing.ledger.events import UsageEvent
from billing.ledger.services import usage_record_create
from billing.models import UsageRecord
from core.db import database_sync_to_async
from core.redis import async_redis, redis_command

logger = logging.getLogger(__name__)

STREAM_KEY = "llmops:ledger"
GROUP = "ledger-drainers"
# Entries that can never become a row (a reference that no longer exists, a malformed event): kept for an
# operator to inspect instead of blocking the stream.
DEAD_LETTER_KEY = "llmops:ledger:dead"
EVENT_FIELD = b"event"
BATCH_SIZE = 500
# How often a drainer that found the stream empty reads it again. It does not block on the stream by default: a
# blocked read returns the moment an entry is appended, so on the gateway's cores the drainer woke inside the very
# request whose settle appended it, and took the core its answer was about to need (docs/performance.md).
POLL_SECONDS = 0.1
# The longest a read may wait on the stream instead (``ledger_stream_run``'s ``block_ms``).
MAX_BLOCK_MS = 1000
CLAIM_IDLE_MS = 60_000
CLAIM_EVERY_SECONDS = 30.0
RETRY_PAUSE_SECONDS = 1.0
# After a batch that did not fill up, let the next one gather for this long: one commit per batch, not per few rows.
LINGER_SECONDS = 0.05

_EVENT_FIELDS = tuple(f.name for f in fields(UsageEvent))
_DECIMAL_FIELDS = tuple(f.name for f in fields(UsageEvent) if f.type is Decimal)
_DATETIME_FIELDS = tuple(f.name for f in fields(UsageEvent) if f.type is datetime)


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def usage_event_encode(event: UsageEvent) -> bytes:
    """orjson, money as decimal strings so nothing passes through float."""
    return orjson.dumps({name: getattr(event, name) for name in _EVENT_FIELDS}, default=_json_default)


def usage_event_decode(raw: bytes) -> UsageEvent:
    """An event as encoded, by this version or an earlier one: a field added since takes its default."""
    data = orjson.loads(raw)
    for name in _DECIMAL_FIELDS:
        if name in data:
            data[name] = Decimal(data[name])
    for name in _DATETIME_FIELDS:
        data[name] = datetime.fromisoformat(data[name])
    return UsageEvent(**data)


def ledger_streaming() -> bool:
    return settings.LLMOPS_LEDGER_MODE == "stream" and bool(settings.REDIS_URL)


async def ledger_event_append(*, event: UsageEvent) -> None:
    """Make the request's ledger record durable: appended to the stream, or written to the database. Carried
    through when the caller is cancelled meanwhile (a client that hung up): the request happened all the same."""
    await asyncio.shield(_event_append(event))


async def _event_append(event: UsageEvent) -> None:
    client = async_redis() if ledger_streaming() else None
    if client is not None:
        try:
            await redis_command(client, "XADD", STREAM_KEY, "*", EVENT_FIELD, usage_event_encode(event))
            return
        except RedisError:
            logger.warning("ledger stream unreachable; writing %s to the database directly", event.request_id)
    await database_sync_to_async(usage_record_create)(event=event)


def ledger_stream_client() -> redis.Redis:
    """A client of its own for a drainer: its blocking reads must outlast the shared client's socket timeout."""
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=MAX_BLOCK_MS / 1000 + 10, socket_connect_timeout=5, health_check_interval=30
    )


def ledger_stream_backlog(*, client: redis.Redis) -> int:
    """Events appended and not yet committed to Postgres (entries leave the stream once their row is in)."""
    return client.xlen(STREAM_KEY)


def default_consumer_name() -> str:
    """Stable across restarts on one host, so a restarted drainer finds its own pending entries by name."""
    return f"drainer-{socket.gethostname()}"


def _ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _entries(reply) -> list[tuple[bytes, dict | None]]:
    """The (id, fields) pairs of an XREADGROUP reply for our one stream."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for stream_entries in reply.values() for entry in stream_entries[0]]
    return [entry for _stream, stream_entries in reply for entry in stream_entries]


def _read(client: redis.Redis, consumer: str, *, start: str, count: int, block_ms: int | None):
    try:
        return _entries(client.xreadgroup(GROUP, consumer, {STREAM_KEY: start}, count=count, block=block_ms))
    except ResponseError as error:
        # The stream or group was deleted (FLUSHDB, an operator): start again from the stream's first entry.
        if "NOGROUP" not in str(error) and "UNBLOCKED" not in str(error):
            raise
        _ensure_group(client)
        return []


# A temporary table per connection, named by a digest of its columns: where a batch lands before it moves into
# the ledger's table.
STAGING_PREFIX = "llmops_ledger_incoming_"


@functools.cache
def _row_fields() -> tuple:
    """The ledger table's columns: all but the primary key, each filled from the event's field of the same name
    (tests/unit/test_ledger_columns.py keeps the two in step)."""
    return tuple(field for field in UsageRecord._meta.concrete_fields if not field.primary_key)


def _insert(events: list[UsageEvent]) -> None:
    """The events' rows in one transaction; an event whose row is already there (an entry read again after a
    drainer died before acknowledging it) is skipped."""
    if not events:
        return
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _copy_insert(events)
        else:
            records = [UsageRecord(**{name: getattr(event, name) for name in _EVENT_FIELDS}) for event in events]
            UsageRecord.objects.bulk_create(records, ignore_conflicts=True)


def staging_table(database) -> tuple[str, str]:
    """The name of the temporary table a batch is copied into on ``database``, and its column definitions: declared
    from the model, and named by a digest of them, so a connection that outlives a migration (a pooled one, or
    PgBouncer's server connection) keeps a table of the old shape under the old name, and this code never copies
    into it."""
    quote = database.ops.quote_name
    definitions = ", ".join(f"{quote(field.column)} {field.db_type(database)}" for field in _row_fields())
    return STAGING_PREFIX + hashlib.sha256(definitions.encode()).hexdigest()[:16], definitions


def _copy_insert(events: list[UsageEvent]) -> None:
    """Each value prepared by its model field as ``bulk_create`` prepares it, copied into the staging table
    (``staging_table``), then moved with ``ON CONFLICT DO NOTHING``, as ``bulk_create(ignore_conflicts=True)``
    inserts. The move deletes what it moves, so the table is empty after every batch, inside an outer transaction
    too. Rows go in ``request_id`` order, so drainers inserting at once take the unique index's locks in one
    order."""
    fields = _row_fields()
    # The connection itself: ``django.db.connection`` is a proxy that looks it up on every attribute read, and each
    # field reads it for each row (about a quarter of the drainer's CPU).
    database = transaction.get_connection()
    quote = database.ops.quote_name
    staging_name, definitions = staging_table(database)
    staging = f"pg_temp.{staging_name}"
    table = quote(UsageRecord._meta.db_table)
    columns = ", ".join(quote(field.column) for field in fields)
    with database.cursor() as cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging_name} ({definitions})")
        # The copy goes to psycopg's cursor itself, past the wrapper that turns its errors into Django's.
        with database.wrap_database_errors, cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
            for event in events:
                copy.write_row([field.get_db_prep_save(getattr(event, field.attname), database) for field in fields])
        cursor.execute(
            f"WITH moved AS (DELETE FROM {staging} RETURNING {columns}) INSERT INTO {table} ({columns}) "
            f"SELECT {columns} FROM moved ORDER BY {quote('request_id')} ON CONFLICT DO NOTHING"
        )


def _store(client: redis.Redis, entries: list[tuple[bytes, dict | None]]) -> int:
    """Write the entries' rows, then acknowledge and delete them. Returns how many entries were settled.

    A database that is down raises before anything is acknowledged, so the entries stay pending and are read
    again. An entry whose row cannot be written at all goes to the dead-letter stream.
    """
    if not entries:
        return 0
    events: list[tuple[bytes, bytes, UsageEvent]] = []
    dead: list[tuple[bytes, bytes, str]] = []
    for entry_id, entry_fields in entries:
        raw = (entry_fields or {}).get(EVENT_FIELD)
        if raw is None:
            # Listed as pending but already deleted from the stream: settled by an earlier run.
            continue
        try:
            events.append((entry_id, raw, usage_event_decode(raw)))
        except (ValueError, TypeError, KeyError) as error:
            dead.append((entry_id, raw, f"undecodable: {error}"))
    try:
        _insert([event for _id, _raw, event in events])
    except (IntegrityError, DataError):
        for entry_id, raw, event in events:
            try:
                _insert([event])
            except (IntegrityError, DataError) as error:
                dead.append((entry_id, raw, str(error)))
    ids = [entry_id for entry_id, _fields in entries]
    pipe = client.pipeline(transaction=True)
    for entry_id, raw, reason in dead:
        logger.error("ledger entry %s cannot be written (%s); moved to %s", entry_id, reason, DEAD_LETTER_KEY)
        pipe.xadd(DEAD_LETTER_KEY, {EVENT_FIELD: raw, b"reason": reason.encode(), b"entry_id": entry_id})
    pipe.xack(STREAM_KEY, GROUP, *ids)
    pipe.xdel(STREAM_KEY, *ids)
    pipe.execute()
    return len(ids)


def ledger_stream_drain(
    *, client: redis.Redis, consumer: str, batch_size: int = BATCH_SIZE, block_ms: int | None = None
) -> int:
    """Read new entries once (waiting up to ``block_ms`` for some), write them, acknowledge them.

    Returns how many entries were settled; 0 means the stream had nothing new for this consumer.
    """
    return _store(client, _read(client, consumer, start=">", count=batch_size, block_ms=block_ms))


def ledger_stream_recover(
    *, client: redis.Redis, consumer: str, claim_idle_ms: int = CLAIM_IDLE_MS, batch_size: int = BATCH_SIZE
) -> int:
    """Settle what an earlier run left unacknowledged: this consumer's own pending entries, then entries that
    other (dead) consumers have held longer than ``claim_idle_ms``. Returns how many were settled."""
    _ensure_group(client)
    settled = 0
    while entries := _read(client, consumer, start="0", count=batch_size, block_ms=None):
        settled += _store(client, entries)
    start = "0-0"
    while True:
        start, claimed, *_deleted = client.xautoclaim(
            STREAM_KEY, GROUP, consumer, min_idle_time=claim_idle_ms, start_id=start, count=batch_size
        )
        settled += _store(client, claimed)
        if start in (b"0-0", "0-0"):
            return settled


def ledger_stream_run(
    *,
    client: redis.Redis,
    consumer: str,
    stop: threading.Event,
    batch_size: int = BATCH_SIZE,
    block_ms: int | None = None,
    claim_idle_ms: int = CLAIM_IDLE_MS,
    linger_seconds: float = LINGER_SECONDS,
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Drain until ``stop`` is set. Recovers first, then claims abandoned entries every CLAIM_EVERY_SECONDS.

    An empty stream is read again after ``poll_seconds``; with ``block_ms`` (at most MAX_BLOCK_MS) the read waits
    on the stream instead, up to that long, and returns as soon as an entry arrives (for a drainer on cores of its
    own, or a test that waits for the ledger).

    Any failure (Redis or Postgres down) is logged and retried after a pause, starting again with recovery,
    so nothing read before the failure is left behind.
    """
    recovered_at: float | None = None
    while not stop.is_set():
        try:
            if recovered_at is None or time.monotonic() - recovered_at > CLAIM_EVERY_SECONDS:
                ledger_stream_recover(client=client, consumer=consumer, claim_idle_ms=claim_idle_ms)
                recovered_at = time.monotonic()
            settled = ledger_stream_drain(client=client, consumer=consumer, batch_size=batch_size, block_ms=block_ms)
            if settled == 0 and block_ms is None:
                stop.wait(poll_seconds)
            elif 0 < settled < batch_size:
                stop.wait(linger_seconds)
        except Exception:
            # A worker outlives any one failure; what it read stays pending and is recovered on the next pass.
            logger.exception("ledger drain failed; retrying in %.0f s", RETRY_PAUSE_SECONDS)
            connection.close()
            recovered_at = None
            stop.wait(RETRY_PAUSE_SECONDS)
