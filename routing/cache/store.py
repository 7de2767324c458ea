"""The response cache's lookups and writes: Redis as the hot tier, Postgres as the durable one.

Every key is scoped by tenant (Redis key prefix, Postgres tenant column, one vector index per tenant and model),
so no lookup can see another tenant's answer. Anything unreadable in either tier is a miss, never an error.

Both tiers hold the answer encrypted (one Fernet token, made once by the writer thread), and Postgres keeps no
request: keys are keyed hashes, and only a semantic entry keeps its prompt's text, encrypted (routing/models/cache.py).

Nothing here waits on the event loop for more than Redis: embeddings run on the embedding thread
(routing/cache/embedders.py), the vector search in Postgres on a database thread (on SQLite, in this process's index
on the embedding thread), and stores and hit counts are queued for this process's writer thread, which upserts
whatever is queued in one statement, then copies it to Redis. Until then a store sits in a per-process pending map,
read before Redis and searched by meaning with the index, so this process finds its own writes.
"""

import asyncio
import atexit
import functools
import logging
import math
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import numpy as np
from celery.signals import worker_process_shutdown
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import F, Field
from django.utils import timezone

from core.db import database_sync_to_async
from core.redis import async_redis, redis_command, sync_redis
from routing.cache.batching import BatchWorker
from routing.cache.crossencoder import semantic_decide
from routing.cache.embedders import embed_soon
from routing.cache.index import (
    MAX_CANDIDATES,
    Candidate,
    IndexedEntry,
    semantic_index,
    semantic_indexes_forget,
    stored_matches,
    vector_cursor,
    vectors_in_database,
)
from routing.cache.keys import (
    CacheControl,
    SemanticKey,
    canonical_request,
    embeddings_canonical_request,
    exact_key,
    is_cacheable,
    semantic_key,
)
from routing.cache.sealed import open_answer, seal_answer, seal_prompt
from routing.models import CacheEntry, CacheEntryKind
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# The most queued stores (or hit counts) the writer thread puts in one batch.
WRITE_BATCH = 100
# How long a process that stops gracefully waits for the stores and hit counts it queued to be written.
EXIT_FLUSH_SECONDS = 5
# Where a stored answer keeps when it was stored (Unix seconds), taken out before it is served: a lookup refuses an
# entry older than the TTL of the rule that matches now, so a TTL lowered since the store applies to it.
STORED_AT_NOTE = "llmops_stored_at"
# The finish reasons of a whole answer. "length" was cut at max_tokens and "content_filter" withheld (OpenAI's
# filter, Anthropic's refusal, Bedrock's guardrail): neither is stored. "function_call" is the legacy tool call.
COMPLETE_FINISH_REASONS = frozenset({"stop", "tool_calls", "function_call"})
# A purge deletes the Redis copies once more this long after it commits: a lookup that read a purged row just before
# the commit writes it back to Redis just after (as does another process's writer thread, for a row it had just
# written).
PURGE_REPEAT_SECONDS = 2.0
ENTRY_KEY_FIELDS = ["tenant", "served_model", "key_hash"]
# A store replaces an entry of the same key whole, hit count included.
ENTRY_STORED_FIELDS = [
    "kind",
    "answer_encrypted",
    "embedding",
    "prompt_encrypted",
    "context_fingerprint",
    "rule_name",
    "expires_at",
    "hit_count",
    "last_hit_at",
]


def redis_key(tenant_id: int, served_model: str, key_hash: str) -> str:
    return f"{redis_tenant_prefix(tenant_id)}{served_model}:{key_hash}"


def redis_tenant_prefix(tenant_id: int) -> str:
    return f"llmops:cache:{tenant_id}:"


def semantic_threshold(rule_name: str) -> float:
    return settings.LLMOPS_CACHE_RULE_THRESHOLDS.get(rule_name, settings.LLMOPS_CACHE_SEMANTIC_THRESHOLD)


@dataclass(slots=True)
class CacheRequest:
    """One request's view of the cache, prepared once the route and served model are known."""

    tenant_id: int
    served_model: str
    rule_name: str
    # The matched rule's TTL: how long an answer stored now is kept, and how old an entry this request may be served.
    ttl_seconds: int
    key_hash: str
    semantic: SemanticKey | None
    control: CacheControl
    vector: np.ndarray | None = field(default=None, repr=False)
    # The max_tokens the gateway set, after the key was made, on a request that sent none (admission, for a budget):
    # other requests share the key, so only an answer that ended below it is stored.
    added_max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: dict
    kind: str
    similarity: float | None = None


def cache_request_prepare(
    *,
    tenant_id: int,
    served_model: str,
    upstream: str,
    body: dict,
    rule_name: str,
    ttl_seconds: int | None,
    allow_nondeterministic: bool,
    control: CacheControl,
    semantic: bool = True,
) -> CacheRequest | None:
    """None when the request does not use the cache: the rule sets no TTL, the request is not deterministic (or asks
    for log probabilities), or the client turned both reading and writing off. Without `semantic` (the rule's
    semantic_cache off) it is exact only: no semantic lookup, and no semantic entry stored. `upstream`: the served
    model's `upstream_identity`."""
    if not ttl_seconds or not (control.read or control.write):
        return None
    if not is_cacheable(body, allow_nondeterministic=allow_nondeterministic):
        return None
    request = canonical_request(body)
    return CacheRequest(
        tenant_id=tenant_id,
        served_model=served_model,
        rule_name=rule_name,
        ttl_seconds=ttl_seconds,
        key_hash=exact_key(tenant_id=tenant_id, served_model=served_model, upstream=upstream, request=request),
        semantic=semantic_key(request, upstream=upstream) if semantic and settings.LLMOPS_CACHE_EMBEDDER else None,
        control=control,
    )


def embeddings_cache_request_prepare(
    *,
    tenant_id: int,
    served_model: str,
    upstream: str,
    body: dict,
    rule_name: str,
    ttl_seconds: int | None,
    control: CacheControl,
) -> CacheRequest | None:
    """An embeddings request's view of the cache: exact matches only (an embedding is a function of its input, so
    no rule needs to opt in to caching it). None when the rule sets no TTL or the client turned the cache off."""
    if not ttl_seconds or not (control.read or control.write):
        return None
    return CacheRequest(
        tenant_id=tenant_id,
        served_model=served_model,
        rule_name=rule_name,
        ttl_seconds=ttl_seconds,
        key_hash=exact_key(
            tenant_id=tenant_id,
            served_model=served_model,
            upstream=upstream,
            request=embeddings_canonical_request(body),
        ),
        semantic=None,
        control=control,
    )


def _valid_answer(answer) -> bool:
    """A chat completion whose every choice is a message that finished whole (COMPLETE_FINISH_REASONS), or an
    embeddings list (which has no choices: a chat reply that also calls itself a list is judged by its choices)."""
    if not isinstance(answer, dict):
        return False
    if answer.get("object") == "list" and "choices" not in answer:
        return isinstance(answer.get("data"), list) and bool(answer["data"])
    return (
        isinstance(answer.get("choices"), list)
        and bool(answer["choices"])
        and all(
            isinstance(choice, dict)
            and isinstance(choice.get("message"), dict)
            and choice.get("finish_reason") in COMPLETE_FINISH_REASONS
            for choice in answer["choices"]
        )
    )


def _within_added_max_tokens(cache: CacheRequest, answer: dict) -> bool:
    """Whether the answer ended below the gateway's own cap (CacheRequest.added_max_tokens), so it is the answer the
    request gets without it: one that reached it may have been cut short, whatever its finish reason says."""
    if cache.added_max_tokens is None:
        return True
    usage = answer.get("usage")
    completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return isinstance(completion_tokens, int) and completion_tokens < cache.added_max_tokens


def _stamped(answer: dict, cache: CacheRequest, expires_at: datetime) -> dict:
    """The answer with the time it was stored noted in it (STORED_AT_NOTE): its expiry less the TTL it was stored
    for."""
    return {**answer, STORED_AT_NOTE: (expires_at - timedelta(seconds=cache.ttl_seconds)).timestamp()}


def _fresh(cache: CacheRequest, answer: dict) -> dict | None:
    """The answer as it is served (the note of when it was stored taken out), or None when it was stored longer ago
    than the TTL of the request's rule: a rule whose TTL was lowered since stops serving what it stored before.
    An answer without the note has no known age: it is not served either."""
    stored_at = answer.get(STORED_AT_NOTE)
    if not isinstance(stored_at, int | float) or timezone.now().timestamp() - stored_at > cache.ttl_seconds:
        return None
    return {key: value for key, value in answer.items() if key != STORED_AT_NOTE}


EntryKey = tuple[int, str, str]


@dataclass(slots=True)
class _PendingStore:
    """A store queued for the writer thread. `vector` is a future while the embedding thread computes it."""

    cache: CacheRequest
    answer: dict
    expires_at: datetime
    vector: np.ndarray | Future | None

    @property
    def key(self) -> EntryKey:
        return (self.cache.tenant_id, self.cache.served_model, self.cache.key_hash)


@dataclass(frozen=True, slots=True)
class _HitsNoted:
    """Queued for the writer when hits start to gather in _noted_hits: it takes them all."""


_HITS_NOTED = _HitsNoted()
# Hits noted on the event loop since the writer last took them. Counted here, not queued one by one: a hot entry's
# hits woke the writer thread once each, several percent of an exact-hit worker's CPU.
_noted_hits: Counter = Counter()
_noted_lock = threading.Lock()


# Stores not yet written, by (tenant id, served model, key hash); the writer thread removes each once it is in
# Postgres and Redis (or failed).
_pending: dict[EntryKey, _PendingStore] = {}
_pending_lock = threading.Lock()


def _stored_answer(tenant_id: int, served_model: str, key_hash: str) -> tuple[str, datetime] | None:
    """The sealed answer of the key's live row and its expiry."""
    return (
        CacheEntry.objects.for_tenant(tenant_id)
        .filter(served_model=served_model, key_hash=key_hash, expires_at__gt=timezone.now())
        .values_list("answer_encrypted", "expires_at")
        .first()
    )


def _opened(sealed: str | bytes) -> dict | None:
    answer = open_answer(sealed)
    return answer if _valid_answer(answer) else None


async def _fast_answer(tenant_id: int, served_model: str, key_hash: str) -> tuple[dict | None, bool]:
    """This process's pending store, else Redis; None when neither holds the key. The flag says whether Redis
    answered, so a row read from the database is copied back only to a Redis that is up (one failing call per
    lookup during an outage, not two)."""
    pending = _pending.get((tenant_id, served_model, key_hash))
    if pending is not None and pending.expires_at > timezone.now():
        return pending.answer, True
    client = async_redis()
    if client is None:
        return None, False
    key = redis_key(tenant_id, served_model, key_hash)
    try:
        raw = await redis_command(client, "GET", key)
    except Exception:
        logger.warning("cache: Redis unavailable, reading Postgres", exc_info=True)
        return None, False
    if raw is None:
        return None, True
    answer = _opened(raw)
    if answer is None:
        logger.warning("cache: unreadable Redis entry %s ignored", key)
    return answer, True


async def _redis_refill(tenant_id: int, served_model: str, key_hash: str, sealed: str, expires_at: datetime) -> None:
    """A durable row read because Redis lacked it, copied back to Redis for the time it has left."""
    client = async_redis()
    ttl = int((expires_at - timezone.now()).total_seconds())
    if client is None or ttl <= 0:
        return
    try:
        await client.set(redis_key(tenant_id, served_model, key_hash), sealed, ex=ttl)
    except Exception:
        logger.warning("cache: Redis write failed; Postgres still holds the entry", exc_info=True)


async def _durable_answer(tenant_id: int, served_model: str, key_hash: str, *, refill: bool) -> dict | None:
    """The key's row in the database, copied back to Redis (with `refill`: Redis answered the lookup)."""
    row = await database_sync_to_async(_stored_answer)(tenant_id, served_model, key_hash)
    if row is None:
        return None
    sealed, expires_at = row
    answer = _opened(sealed)
    if answer is not None and refill:
        await _redis_refill(tenant_id, served_model, key_hash, sealed, expires_at)
    return answer


async def _answer_for(tenant_id: int, served_model: str, key_hash: str) -> dict | None:
    """This process's pending store, else Redis; on a Redis miss the durable row, copied back to Redis for the time
    it has left."""
    answer, redis_up = await _fast_answer(tenant_id, served_model, key_hash)
    if answer is None:
        answer = await _durable_answer(tenant_id, served_model, key_hash, refill=redis_up)
    return answer


def _note_hit(cache: CacheRequest, key_hash: str) -> None:
    with _noted_lock:
        first = not _noted_hits
        _noted_hits[(cache.tenant_id, cache.served_model, key_hash)] += 1
    if first:
        _writer.put(_HITS_NOTED)


def _forget_parents_hits() -> None:
    """In a forked child: the parent's notes are the parent's to write, and its lock may have been held mid-fork."""
    global _noted_lock
    _noted_lock = threading.Lock()
    _noted_hits.clear()
    _held_hits.clear()
    _hits_timer.clear()


def _noted_hits_take() -> Counter:
    with _noted_lock:
        hits = Counter(_noted_hits)
        _noted_hits.clear()
    return hits


def _search(cache: CacheRequest, threshold: float, vector: np.ndarray):
    """On the embedding thread, right after the embedding."""
    index = semantic_index(cache.tenant_id, cache.served_model)
    return vector, index.search(vector, context_fingerprint=cache.semantic.context_fingerprint, threshold=threshold)


def _pending_candidates(cache: CacheRequest, vector: np.ndarray, threshold: float) -> list[Candidate]:
    """This process's stores of the same tenant, model and context not yet written to Postgres, by meaning."""
    context = cache.semantic.context_fingerprint
    with _pending_lock:
        stores = [
            pending
            for pending in _pending.values()
            if pending.key[:2] == (cache.tenant_id, cache.served_model)
            and pending.cache.semantic is not None
            and pending.cache.semantic.context_fingerprint == context
        ]
    now = timezone.now()
    found = []
    for pending in stores:
        stored = _embedded(pending)
        if stored is None or stored.shape != vector.shape or pending.expires_at <= now:
            continue
        similarity = float(stored @ vector)
        if similarity >= threshold:
            entry = IndexedEntry(pending.key[2], pending.cache.semantic.text, context, pending.expires_at.timestamp())
            found.append(Candidate(entry, similarity))
    return found


async def _embedding_awaited(future: Future):
    """The embedding thread's result, or None once LLMOPS_CACHE_EMBED_WAIT_SECONDS have passed (the job is
    cancelled if it has not started): a stalled embedder makes a miss, not a hung request."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS)
    except TimeoutError:
        logger.warning(
            "cache: no embedding within %gs; the lookup goes on as a miss", settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS
        )
        return None


def _exact_hit(cache: CacheRequest, answer: dict) -> CacheHit | None:
    """The hit on the request's own key, unless its entry is older than the rule's TTL now allows (a miss)."""
    served = _fresh(cache, answer)
    if served is None:
        return None
    _note_hit(cache, cache.key_hash)
    return CacheHit(answer=served, kind="exact")


async def _semantic_hit(cache: CacheRequest, candidates: list[Candidate], *, deadline: float) -> CacheHit | None:
    """The most similar candidate the near-miss guard and the cross-encoder accept (routing/cache/crossencoder.py)
    whose answer is still there. `deadline` (time.monotonic()) was set before the embedding: one wait covers the
    embedding and the cross-encoder's scoring."""
    remaining = sorted(candidates, key=lambda candidate: -candidate.similarity)
    while (candidate := await semantic_decide(cache.semantic.text, remaining, deadline=deadline)) is not None:
        if candidate.answer_sealed is not None:
            answer = _opened(candidate.answer_sealed)
        else:
            answer = await _answer_for(cache.tenant_id, cache.served_model, candidate.entry.key_hash)
        if answer is None:
            if not vectors_in_database():
                semantic_index(cache.tenant_id, cache.served_model).discard(candidate.entry)
        elif (served := _fresh(cache, answer)) is not None:
            _note_hit(cache, candidate.entry.key_hash)
            return CacheHit(answer=served, kind="semantic", similarity=candidate.similarity)
        # Its answer is gone (purged or expired since the search) or older than the rule's TTL: the less similar
        # candidates are decided next, within the same wait; once it has run out, the lookup is a miss.
        if time.monotonic() >= deadline:
            return None
        remaining = remaining[remaining.index(candidate) + 1 :]
    return None


async def _in_process_lookup(cache: CacheRequest, *, redis_up: bool) -> CacheHit | None:
    """SQLite: the key's row, else the nearest entries in this process's index (searched on the embedding thread)."""
    answer = await _durable_answer(cache.tenant_id, cache.served_model, cache.key_hash, refill=redis_up)
    if answer is not None:
        return _exact_hit(cache, answer)
    if cache.semantic is None:
        return None
    deadline = time.monotonic() + settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS
    threshold = semantic_threshold(cache.rule_name)
    index = semantic_index(cache.tenant_id, cache.served_model)
    if index.stale():
        await database_sync_to_async(index.refresh)()
    searched = await _embedding_awaited(embed_soon(cache.semantic.prompt, then=partial(_search, cache, threshold)))
    if searched is None:
        return None
    cache.vector, candidates = searched
    return await _semantic_hit(cache, candidates, deadline=deadline)


async def _database_lookup(cache: CacheRequest, *, redis_up: bool) -> CacheHit | None:
    """PostgreSQL: the key's row and the nearest entries of its context in one query, after the embedding."""
    deadline = time.monotonic() + settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS
    vector = await _embedding_awaited(embed_soon(cache.semantic.prompt))
    if vector is None:
        answer = await _durable_answer(cache.tenant_id, cache.served_model, cache.key_hash, refill=redis_up)
        return None if answer is None else _exact_hit(cache, answer)
    cache.vector = vector
    threshold = semantic_threshold(cache.rule_name)
    # The pending stores before the table: the writer thread takes a store off the pending map only after its row is
    # committed, so a store missing from this read is in the table when the query reads it. Read after the query, a
    # store committed while it ran would be in neither.
    pending = _pending_candidates(cache, vector, threshold)
    matches = await database_sync_to_async(stored_matches)(
        tenant_id=cache.tenant_id,
        served_model=cache.served_model,
        key_hash=cache.key_hash,
        context_fingerprint=cache.semantic.context_fingerprint,
        vector=vector,
        threshold=threshold,
    )
    if matches.exact_answer_sealed is not None:
        answer = _opened(matches.exact_answer_sealed)
        if answer is not None:
            if redis_up:
                await _redis_refill(
                    cache.tenant_id,
                    cache.served_model,
                    cache.key_hash,
                    matches.exact_answer_sealed,
                    matches.exact_expires_at,
                )
            return _exact_hit(cache, answer)
    unique = {candidate.entry.key_hash: candidate for candidate in [*matches.candidates, *pending]}
    candidates = sorted(unique.values(), key=lambda candidate: -candidate.similarity)[:MAX_CANDIDATES]
    return await _semantic_hit(cache, candidates, deadline=deadline)


async def cache_lookup(cache: CacheRequest) -> CacheHit | None:
    """The exact entry, else the most similar entry of the same context that the near-miss guard and the
    cross-encoder accept, else None.

    This process's pending stores and Redis answer most exact repeats; past them, Postgres is asked once for both
    the exact row and the nearest semantic entries."""
    answer, redis_up = await _fast_answer(cache.tenant_id, cache.served_model, cache.key_hash)
    if answer is not None:
        return _exact_hit(cache, answer)
    if not vectors_in_database():
        return await _in_process_lookup(cache, redis_up=redis_up)
    if cache.semantic is None:
        answer = await _durable_answer(cache.tenant_id, cache.served_model, cache.key_hash, refill=redis_up)
        return None if answer is None else _exact_hit(cache, answer)
    return await _database_lookup(cache, redis_up=redis_up)


def _index_add(pending: _PendingStore, vector: np.ndarray) -> np.ndarray:
    """This process's index learns the store at once (SQLite); Postgres's learns it when the row is written."""
    if vectors_in_database():
        return vector
    cache = pending.cache
    semantic_index(cache.tenant_id, cache.served_model).add(
        IndexedEntry(
            cache.key_hash,
            cache.semantic.text,
            cache.semantic.context_fingerprint,
            pending.expires_at.timestamp(),
        ),
        vector,
    )
    return vector


def cache_store(cache: CacheRequest, *, answer: dict) -> None:
    """Keep a complete, successful answer without making the response wait: this process serves it at once, the
    writer thread makes it durable in Postgres, then copies it to Redis."""
    if not cache.control.write or not _valid_answer(answer) or not _within_added_max_tokens(cache, answer):
        return
    expires_at = timezone.now() + timedelta(seconds=cache.ttl_seconds)
    pending = _PendingStore(cache, _stamped(answer, cache, expires_at), expires_at, cache.vector)
    with _pending_lock:
        _pending[pending.key] = pending
    if cache.semantic is not None:
        if cache.vector is not None:
            _index_add(pending, cache.vector)
        else:
            # The lookup did not embed (the client bypassed it): embed now, off the response path.
            pending.vector = embed_soon(cache.semantic.prompt, then=partial(_index_add, pending))
    _writer.put(pending)


def _embedded(pending: _PendingStore) -> np.ndarray | None:
    """The store's vector if it is there already, without waiting for the embedding thread."""
    vector = pending.vector
    if isinstance(vector, Future):
        return vector.result() if vector.done() and vector.exception() is None else None
    return vector


def _stored_vector(pending: _PendingStore, *, deadline: float) -> np.ndarray | None:
    """The store's vector, waited for until ``deadline`` (time.monotonic()) at most."""
    if not isinstance(pending.vector, Future):
        return pending.vector
    try:
        return pending.vector.result(timeout=max(0.0, deadline - time.monotonic()))
    except Exception:
        logger.warning("cache: embedding failed; the entry is stored for exact matches only", exc_info=True)
        return None


def _entry_row(pending: _PendingStore, *, deadline: float) -> CacheEntry:
    cache = pending.cache
    vector = _stored_vector(pending, deadline=deadline) if cache.semantic is not None else None
    return cache_entry_build(cache, answer=pending.answer, vector=vector, expires_at=pending.expires_at)


def cache_entry_build(
    cache: CacheRequest, *, answer: dict, vector: np.ndarray | None, expires_at: datetime
) -> CacheEntry:
    """The row a store writes (unsaved): semantic when it has a vector, with its text (as sent) and its answer (noted
    with when it was stored) encrypted."""
    semantic = cache.semantic if vector is not None else None
    return CacheEntry(
        tenant_id=cache.tenant_id,
        served_model=cache.served_model,
        key_hash=cache.key_hash,
        kind=CacheEntryKind.SEMANTIC if semantic else CacheEntryKind.EXACT,
        answer_encrypted=seal_answer(_stamped(answer, cache, expires_at)),
        embedding=vector.astype(np.float32) if semantic else None,
        prompt_encrypted=seal_prompt(semantic.text) if semantic else "",
        context_fingerprint=semantic.context_fingerprint if semantic else "",
        rule_name=cache.rule_name,
        expires_at=expires_at,
        hit_count=0,
        last_hit_at=None,
    )


@functools.cache
def _upsert_statement() -> tuple[str, list[Field]]:
    """PostgreSQL's upsert of one row, written once: what `bulk_create(update_conflicts=True)` would send, with the
    vector as a binary parameter instead of 384 floats as text, and no query compiled per write."""
    fields = [field for field in CacheEntry._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(field.column for field in fields)
    values = ", ".join(
        f"%({field.column})b" if field.name == "embedding" else f"%({field.column})s" for field in fields
    )
    conflict = ", ".join(CacheEntry._meta.get_field(name).column for name in ENTRY_KEY_FIELDS)
    updates = ", ".join(
        f"{column} = EXCLUDED.{column}"
        for column in (CacheEntry._meta.get_field(name).column for name in ENTRY_STORED_FIELDS)
    )
    sql = (
        f"INSERT INTO {CacheEntry._meta.db_table} ({columns}) VALUES ({values}) "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )
    return sql, fields


def _upsert(rows: list[CacheEntry]) -> None:
    """All the rows or none (a refused batch is retried row by row)."""
    if not vectors_in_database():
        CacheEntry.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=ENTRY_KEY_FIELDS, update_fields=ENTRY_STORED_FIELDS
        )
        return
    sql, fields = _upsert_statement()
    parameters = [
        {
            field.column: row.embedding
            if field.name == "embedding"
            else field.get_db_prep_save(field.pre_save(row, add=True), connection)
            for field in fields
        }
        for row in rows
    ]
    with transaction.atomic(), vector_cursor() as cursor:
        cursor.executemany(sql, parameters)


def _stores_write(stores: list[_PendingStore]) -> None:
    """One upsert for the batch (the last store of a key wins), then Redis; a batch the database refuses is
    retried entry by entry, so one bad entry costs only itself."""
    latest = list({pending.key: pending for pending in stores}.values())
    written: list[tuple[_PendingStore, CacheEntry]] = []
    try:
        # One wait for the whole batch: waiting per store, a stalled embedder would hold the writer (and the exact
        # stores and hit counts queued behind it) for the wait times the batch's size.
        deadline = time.monotonic() + settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS
        rows = [_entry_row(pending, deadline=deadline) for pending in latest]
        try:
            _upsert(rows)
            written = list(zip(latest, rows, strict=True))
        except DatabaseError:
            logger.warning(
                "cache: a batch of %d entries was refused; storing them one by one", len(rows), exc_info=True
            )
            for pending, row in zip(latest, rows, strict=True):
                try:
                    _upsert([row])
                    written.append((pending, row))
                except DatabaseError:
                    logger.warning("cache: entry %s not stored", row, exc_info=True)
        _redis_copy(written)
    finally:
        with _pending_lock:
            for pending in stores:
                if _pending.get(pending.key) is pending:
                    del _pending[pending.key]


def _redis_copy(written: list[tuple[_PendingStore, CacheEntry]]) -> None:
    """The rows' sealed answers, as Postgres holds them, copied to Redis."""
    client = sync_redis()
    if client is None or not written:
        return
    now = timezone.now()
    try:
        with client.pipeline(transaction=False) as pipe:
            for pending, row in written:
                ttl = math.ceil((pending.expires_at - now).total_seconds())
                if ttl > 0:
                    pipe.set(redis_key(*pending.key), row.answer_encrypted, ex=ttl)
            pipe.execute()
    except Exception:
        logger.warning("cache: Redis write failed; Postgres still holds the entries", exc_info=True)


def _hits_count(hits: Counter) -> None:
    now = timezone.now()
    for (tenant_id, served_model, key_hash), count in hits.items():
        CacheEntry.objects.for_tenant(tenant_id).filter(served_model=served_model, key_hash=key_hash).update(
            hit_count=F("hit_count") + count, last_hit_at=now
        )


@dataclass(frozen=True, slots=True)
class _HitsDue:
    """Queued by a timer: the hit counts held back since the last write are due."""


# Hit counts wait up to this long on the writer thread and go out as one update per entry: a hot entry hit hundreds
# of times a second is then rewritten once a second, not once per batch (each rewrite of a semantic row leaves a dead
# row version behind, and adds another to its HNSW index when Postgres cannot update it in place).
HIT_COUNT_DELAY_SECONDS = 1.0
# The writer thread's own: hit counts not yet written, and whether a timer will queue _HitsDue for them.
_held_hits: Counter = Counter()
_hits_timer: list[threading.Timer] = []


def _hits_hold(hits: Counter, *, due: bool) -> None:
    """Add the batch's hit counts to those held back, and write them all when they are due (a timer queued
    _HitsDue, or a flush is waiting)."""
    _held_hits.update(hits)
    if not _held_hits:
        return
    if not due:
        if not _hits_timer:
            timer = threading.Timer(HIT_COUNT_DELAY_SECONDS, _writer.put, args=(_HitsDue(),))
            timer.daemon = True
            timer.start()
            _hits_timer.append(timer)
        return
    if _hits_timer:
        _hits_timer.pop().cancel()
    held = Counter(_held_hits)
    _held_hits.clear()
    try:
        _hits_count(held)
    except DatabaseError:
        logger.warning("cache: %d hit counts lost", held.total(), exc_info=True)


def _write_batch(items: list) -> None:
    """The writer thread's batch: stores, then hit counts (so a hit on an entry still being stored counts), then
    the flushes waiting for both."""
    stores = [item for item in items if isinstance(item, _PendingStore)]
    hits = _noted_hits_take() if any(item is _HITS_NOTED for item in items) else Counter()
    flushes = [item for item in items if isinstance(item, Future)]
    try:
        close_old_connections()
        if stores:
            _stores_write(stores)
        _hits_hold(hits, due=bool(flushes) or any(isinstance(item, _HitsDue) for item in items))
    finally:
        for flush in flushes:
            flush.set_result(None)


_writer = BatchWorker("cache-writer", _write_batch, max_batch=lambda: WRITE_BATCH)
os.register_at_fork(after_in_child=_forget_parents_hits)


def cache_writes_flush(timeout: float = 30) -> None:
    """Wait until the stores and hit counts this process queued so far are in Postgres and Redis: before a purge
    (so a purged answer is not written back after it), at exit, and in tests that read CacheEntry rows."""
    if not _writer.running():
        return
    done: Future = Future()
    _writer.put(done)
    done.result(timeout)


# A server stopping gracefully writes what it has queued; the writer is a daemon thread and would be cut short.
atexit.register(cache_writes_flush, timeout=EXIT_FLUSH_SECONDS)
# Celery's pool processes end with os._exit, which runs no exit hook: they write what their batch lines and jobs
# queued as they stop.
worker_process_shutdown.connect(lambda **_: cache_writes_flush(EXIT_FLUSH_SECONDS), weak=False)


class CachePurgeIncomplete(Exception):
    """The entries are deleted from Postgres, but Redis did not delete its copies of them: those are still served
    until they expire."""

    def __init__(self, deleted: int, served_until: datetime):
        super().__init__(
            f"{deleted} cache entries were deleted from Postgres, but Redis could not delete its copies of them: they "
            f"are served from Redis until {served_until:%Y-%m-%d %H:%M:%S %Z} at the latest, unless their keys "
            "(llmops:cache:<tenant id>:*) are deleted from Redis once it answers again"
        )
        self.deleted = deleted


def _redis_delete(keys: list[str]) -> bool:
    """Delete the keys' copies in Redis; False, logged as an error, when Redis did not."""
    client = sync_redis()
    if client is None or not keys:
        return True
    try:
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except Exception:
        logger.error(
            "cache: Redis did not delete the copies of %d deleted entries; they are served until they expire",
            len(keys),
            exc_info=True,
        )
        return False
    return True


def _forget_committed(keys: list[str], tenant_ids: set[int], failed: list[bool]) -> None:
    """Once the delete is committed: Redis's copies and this process's vector indexes go. Before the commit a lookup
    still reads the rows, and would copy them back to Redis (or into its index) after they had gone; one that read
    them just before the commit can still do so just after, so Redis is cleared once more PURGE_REPEAT_SECONDS
    later (a thread that is not a daemon: a management command's process waits for it before it exits)."""
    if not _redis_delete(keys):
        failed.append(True)
    for tenant_id in tenant_ids:
        semantic_indexes_forget(tenant_id)
    if keys:
        repeat = threading.Timer(PURGE_REPEAT_SECONDS, _redis_delete, args=(keys,))
        repeat.daemon = False
        repeat.start()


def cache_entries_purge(*, tenant: Tenant, model: str = "", rule: str = "", older_than: timedelta | None = None) -> int:
    """Delete a tenant's entries, optionally only of one served model, one rule, or created before an age, as
    `cache_entries_delete` does."""
    entries = CacheEntry.objects.for_tenant(tenant)
    if model:
        entries = entries.filter(served_model=model)
    if rule:
        entries = entries.filter(rule_name=rule)
    if older_than is not None:
        entries = entries.filter(created_at__lt=timezone.now() - older_than)
    return cache_entries_delete(entries=entries)


def cache_entries_delete(*, entries) -> int:
    """Delete these entries (a queryset already scoped by the caller) from Postgres, then, once that is committed,
    from Redis and this process's vector indexes (on Postgres the search reads the table, so every process stops
    finding them at once). Raises CachePurgeIncomplete when Redis did not delete its copies at the commit; inside a
    caller's transaction that happens at the caller's commit, where the failure is logged only."""
    cache_writes_flush()
    failed: list[bool] = []
    with transaction.atomic():
        doomed = list(entries.values_list("pk", "tenant_id", "served_model", "key_hash", "expires_at"))
        # Unscoped, reviewed: exactly the rows just read through the caller's scope.
        CacheEntry.objects.unscoped().filter(pk__in=[pk for pk, *_ in doomed]).delete()
        keys = [redis_key(tenant_id, model, key_hash) for _, tenant_id, model, key_hash, _ in doomed]
        transaction.on_commit(partial(_forget_committed, keys, {tenant_id for _, tenant_id, *_ in doomed}, failed))
    if failed:
        raise CachePurgeIncomplete(len(doomed), max(expires_at for *_, expires_at in doomed))
    return len(doomed)


def cache_entries_expire(*, now: datetime | None = None) -> int:
    """Delete every tenant's expired entries. A cross-tenant job."""
    # Unscoped, reviewed: the periodic expiry removes every tenant's expired entries and reads none of them.
    expired = CacheEntry.objects.unscoped().filter(expires_at__lte=now or timezone.now())
    try:
        return cache_entries_delete(entries=expired)
    except CachePurgeIncomplete as incomplete:
        # Redis drops its copies of expired entries by their own TTL, the same expiry.
        return incomplete.deleted
