"""In-process vector index of semantic cache entries, one per tenant and served model.

Built from Postgres on the first lookup for a tenant and model, extended at once on every store in this process,
and topped up from Postgres every LLMOPS_CACHE_INDEX_REFRESH_SECONDS for entries other processes stored. Entries
purged elsewhere drop out when their answer is found missing. Refreshes query the database, so they run in a
worker thread; searches run on the embedding thread, right after the lookup's embedding.
"""

import threading
import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.utils import timezone

from routing.cache.sealed import open_prompt
from routing.models import CacheEntry, CacheEntryKind

MAX_CANDIDATES = 5


@dataclass(frozen=True, slots=True)
class IndexedEntry:
    key_hash: str
    prompt: str
    context_fingerprint: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Candidate:
    entry: IndexedEntry
    similarity: float


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
                prompt = open_prompt(sealed_prompt)
                # Without its text the guard cannot vouch for an entry: it still answers exact repeats.
                if embedding and prompt is not None:
                    entry = IndexedEntry(key_hash, prompt, context, expires_at.timestamp())
                    loaded.append((entry, np.frombuffer(bytes(embedding), np.float32)))
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
        # A vector of another size was written by another embedder and cannot be compared with this one's.
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
