"""Where semantic cache entries are searched by meaning: in PostgreSQL with pgvector, or in each process's memory.

On PostgreSQL (production) the search is a query (`stored_matches`): every gateway process sees an entry as soon as
it is committed, an expired entry is excluded by the query itself, and no process holds vectors. HNSW indexes on the
column (routing migration 0010) keep it fast; the query runs on a database thread, never on the embedding thread,
so one lookup's round trip does not hold up the next batch of embeddings.

Elsewhere (the embedded demo's SQLite) each process keeps an in-process index, one per tenant and served model,
built from the database on the first lookup for a tenant and model, extended at once on every store in this process,
and topped up from Postgres every LLMOPS_CACHE_INDEX_REFRESH_SECONDS for entries other processes stored. Entries
purged elsewhere drop out when their answer is found missing. Refreshes query the database, so they run in a
worker thread; searches run on the embedding thread, right after the lookup's embedding.
"""

import functools
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.backends.postgresql.base import ServerBindingCursor
from django.utils import timezone
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

from routing.cache.keys import normalize_prompt
from routing.cache.sealed import open_prompt
from routing.models import CacheEntry, CacheEntryKind
from tenants.scoping import UnscopedQueryError

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 5


@dataclass(frozen=True, slots=True)
class IndexedEntry:
    key_hash: str
    # The prompt as it was sent (an entry stored before entries kept it has its normalised text here).
    text: str
    context_fingerprint: str
    expires_at: float

    @property
    def prompt(self) -> str:
        """Normalised, as the near-miss guard and the cross-encoder read it."""
        return normalize_prompt(self.text)


@dataclass(frozen=True, slots=True)
class Candidate:
    entry: IndexedEntry
    similarity: float
    # The entry's answer as Postgres holds it (sealed), when the search read it with the entry; else the caller
    # reads it by key.
    answer_sealed: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMatches:
    """What one lookup query found: the live entry of the request's own key (its sealed answer) and the nearest
    semantic entries of its context."""

    exact_answer_sealed: str | None
    exact_expires_at: datetime | None
    candidates: list[Candidate]


class _ContextRows:
    """The vectors of one context fingerprint: a lookup only ever scores the entries that share its context. Rows
    live in a buffer that grows by doubling, so a store appends in place; a replaced or discarded entry frees its
    row."""

    __slots__ = ("entries", "rows_by_key", "vectors")

    def __init__(self, dimension: int):
        self.entries: list[IndexedEntry | None] = []
        self.rows_by_key: dict[str, int] = {}
        self.vectors = np.zeros((1, dimension), dtype=np.float32)

    def put(self, entry: IndexedEntry, vector: np.ndarray) -> None:
        row = self.rows_by_key.get(entry.key_hash)
        if row is None:
            row = len(self.entries)
            if row == self.vectors.shape[0]:
                self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
            self.entries.append(entry)
            self.rows_by_key[entry.key_hash] = row
        self.entries[row] = entry
        self.vectors[row] = vector

    def discard(self, key_hash: str) -> None:
        row = self.rows_by_key.pop(key_hash, None)
        if row is not None:
            self.entries[row] = None
            self.vectors[row] = 0


class SemanticIndex:
    """One tenant's vectors for one served model, grouped by context fingerprint."""

    def __init__(self, tenant_id: int, served_model: str):
        self.tenant_id = tenant_id
        self.served_model = served_model
        self.contexts: dict[str, _ContextRows] = {}
        self.dimension: int | None = None
        self.last_entry_id = 0
        self.refreshed_at = float("-inf")
        self.lock = threading.Lock()
        self.refresh_lock = threading.Lock()

    def stale(self) -> bool:
        return time.monotonic() - self.refreshed_at >= settings.LLMOPS_CACHE_INDEX_REFRESH_SECONDS

    def refresh(self) -> None:
        """Read the entries stored since the last refresh; one query at a time, however many lookups found the
        index stale together."""
        with self.refresh_lock:
            if not self.stale():
                return
            rows = (
                CacheEntry.objects.for_tenant(self.tenant_id)
                .filter(
                    served_model=self.served_model,
                    kind=CacheEntryKind.SEMANTIC,
                    expires_at__gt=timezone.now(),
                    pk__gt=self.last_entry_id,
                )
                .values_list("pk", "key_hash", "prompt_encrypted", "context_fingerprint", "expires_at", "embedding")
            )
            loaded = []
            for pk, key_hash, sealed_prompt, context, expires_at, embedding in rows:
                self.last_entry_id = max(self.last_entry_id, pk)
                text = open_prompt(sealed_prompt)
                # Without its text the guard cannot vouch for an entry: it still answers exact repeats.
                if embedding is not None and text is not None:
                    entry = IndexedEntry(key_hash, text, context, expires_at.timestamp())
                    loaded.append((entry, embedding))
            with self.lock:
                for entry, vector in loaded:
                    self._put(entry, vector)
            self.refreshed_at = time.monotonic()

    def add(self, entry: IndexedEntry, vector: np.ndarray) -> None:
        with self.lock:
            self._put(entry, vector)

    def _put(self, entry: IndexedEntry, vector: np.ndarray) -> None:
        if self.dimension is None:
            self.dimension = vector.shape[0]
        # A vector of another size was written by another embedder and cannot be compared with this one's. (Another
        # embedder's vectors of the same size are under other contexts: the context fingerprint names the embedder.)
        if vector.shape != (self.dimension,):
            return
        rows = self.contexts.get(entry.context_fingerprint)
        if rows is None:
            rows = self.contexts[entry.context_fingerprint] = _ContextRows(self.dimension)
        rows.put(entry, vector)

    def discard(self, entry: IndexedEntry) -> None:
        with self.lock:
            rows = self.contexts.get(entry.context_fingerprint)
            if rows is not None:
                rows.discard(entry.key_hash)

    def search(self, vector: np.ndarray, *, context_fingerprint: str, threshold: float) -> list[Candidate]:
        """Live entries of the same context at or above the threshold, most similar first."""
        with self.lock:
            rows = self.contexts.get(context_fingerprint)
            if rows is None or vector.shape != (self.dimension,):
                return []
            # A row stored or discarded while the scores are computed is seen either way: both are harmless.
            entries, vectors, count = rows.entries, rows.vectors, len(rows.entries)
        similarities = vectors[:count] @ vector.astype(np.float32, copy=False)
        now = time.time()
        above = np.flatnonzero(similarities >= threshold)
        found = []
        for i in above[np.argsort(-similarities[above])]:
            entry = entries[i]
            if entry is not None and entry.expires_at > now:
                found.append(Candidate(entry, float(similarities[i])))
                if len(found) == MAX_CANDIDATES:
                    break
        return found


def vectors_in_database() -> bool:
    """Whether semantic lookups search the database (PostgreSQL with pgvector) instead of a per-process index."""
    return connection.vendor == "postgresql"


# One statement, written once per dimension (the HNSW index of a dimension matches only its own literal cast and
# predicate, migration 0010): the request's own key first (an exact entry Redis no longer holds), then the nearest
# semantic entries of its context, each with its sealed answer, so a hit needs no second read. The tenant, model,
# key, context, vector and limit are parameters, the vector in pgvector's binary form. The HNSW settings it needs
# (hnsw.iterative_scan, hnsw.ef_search) are set when each connection starts (llmops/settings.py), so a lookup is one
# round trip with no transaction.
_MATCHES_SQL = """
(SELECT TRUE AS exact, key_hash, '' AS prompt_encrypted, answer_encrypted, expires_at, 0.0::float8 AS distance
FROM routing_cacheentry
WHERE tenant_id = %(tenant_id)s
    AND served_model = %(served_model)s
    AND key_hash = %(key_hash)s
    AND expires_at > now())
UNION ALL
(SELECT FALSE, key_hash, prompt_encrypted, answer_encrypted, expires_at,
    embedding::vector({dimensions}) <=> %(vector)b::vector({dimensions}) AS distance
FROM routing_cacheentry
WHERE tenant_id = %(tenant_id)s
    AND served_model = %(served_model)s
    AND kind = 'semantic'
    AND context_fingerprint = %(context_fingerprint)s
    AND expires_at > now()
    AND vector_dims(embedding) = {dimensions}
ORDER BY distance
LIMIT %(limit)s)
"""


@functools.cache
def _matches_sql(dimensions: int) -> str:
    return _MATCHES_SQL.format(dimensions=int(dimensions))


_vector_type: TypeInfo | None = None
ITERATIVE_SCANS = ("relaxed_order", "strict_order")


def _vector_types_register(raw_connection) -> None:
    """pgvector's psycopg adapters on this physical connection. The type's description is read once per process:
    without a pool (behind PgBouncer) every request has a new connection, and fetching it each time cost round
    trips per lookup."""
    global _vector_type
    if raw_connection.adapters.types.get("vector") is None:
        if _vector_type is None:
            _vector_type = TypeInfo.fetch(raw_connection, "vector")
            _iterative_scan_check(raw_connection)
        register_vector_info(raw_connection, _vector_type)


def _iterative_scan_check(raw_connection) -> None:
    """Warn when connections start without HNSW iterative scans (startup options off and nothing set on the role):
    a tenant with few entries among many of other tenants' would then find none of its own (misses, never a wrong
    answer)."""
    (mode,) = raw_connection.execute("SELECT current_setting('hnsw.iterative_scan', true)").fetchone()
    if mode not in ITERATIVE_SCANS:
        logger.warning(
            "hnsw.iterative_scan is %r on this database connection: semantic lookups of small tenants may miss; "
            "set LLMOPS_DB_HNSW_STARTUP_OPTIONS or ALTER ROLE ... SET hnsw.iterative_scan = relaxed_order "
            "(docs/caching.md)",
            mode,
        )


@contextmanager
def vector_cursor():
    """A cursor on Django's connection (logged and counted like any other) that sends parameters apart from the
    SQL, so a vector (a numpy array, `%b`) goes in pgvector's binary form: Django's own cursors bind on the client,
    as text. PostgreSQL only."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        _vector_types_register(connection.connection)
        with connection._prepare_cursor(ServerBindingCursor(connection.connection)) as cursor:
            yield cursor


def stored_matches(
    *,
    tenant_id: int,
    served_model: str,
    key_hash: str,
    context_fingerprint: str,
    vector: np.ndarray,
    threshold: float,
) -> StoredMatches:
    """The tenant's live entry of this key, and its live semantic entries of this model and context nearest the
    vector, at or above the threshold, most similar first: one query, on a database thread.

    The query is SQL of its own, not the ORM's (which cost a millisecond of CPU per lookup to build), so it is the
    one way into the table by vector, and it fails closed like `for_tenant()`: it needs a tenant id and reads no
    other tenant's rows.

    Filters and HNSW: a plain HNSW scan returns its ef_search nearest rows of the whole table and filters them
    afterwards, so a tenant with a few rows among many of other tenants' would find none. Iterative scans
    (pgvector 0.8) go on through the graph until the limit is met; and where the filter is selective enough the
    planner reads the tenant's rows through the btree index and sorts them exactly instead. The threshold is
    applied to the nearest rows afterwards: as a WHERE clause it would make an iterative scan read the whole graph
    whenever nothing is that near."""
    if tenant_id is None:
        raise UnscopedQueryError("stored_matches() needs a tenant id, not None")
    parameters = {
        "tenant_id": tenant_id,
        "served_model": served_model,
        "key_hash": key_hash,
        "context_fingerprint": context_fingerprint,
        "vector": vector,
        "limit": MAX_CANDIDATES,
    }
    with vector_cursor() as cursor:
        cursor.execute(_matches_sql(vector.shape[0]), parameters)
        found = cursor.fetchall()
    exact_answer_sealed, exact_expires_at = None, None
    candidates = []
    for exact, found_key, sealed_prompt, sealed_answer, expires_at, distance in found:
        if exact:
            exact_answer_sealed, exact_expires_at = sealed_answer, expires_at
            continue
        similarity = 1 - distance
        if similarity < threshold:
            continue
        text = open_prompt(sealed_prompt)
        # Without its text the guard cannot vouch for an entry: it still answers exact repeats.
        if text is not None:
            entry = IndexedEntry(found_key, text, context_fingerprint, expires_at.timestamp())
            candidates.append(Candidate(entry, similarity, sealed_answer))
    # relaxed_order may return the nearest rows slightly out of order.
    candidates.sort(key=lambda candidate: -candidate.similarity)
    return StoredMatches(exact_answer_sealed, exact_expires_at, candidates)


_indexes: dict[tuple[int, str], SemanticIndex] = {}
_indexes_lock = threading.Lock()


def semantic_index(tenant_id: int, served_model: str) -> SemanticIndex:
    with _indexes_lock:
        index = _indexes.get((tenant_id, served_model))
        if index is None:
            index = _indexes[(tenant_id, served_model)] = SemanticIndex(tenant_id, served_model)
    return index


def semantic_indexes_forget(tenant_id: int) -> None:
    """Drop this process's indexes of a tenant (after a purge); they are rebuilt from Postgres on next use."""
    with _indexes_lock:
        for key in [key for key in _indexes if key[0] == tenant_id]:
            del _indexes[key]
