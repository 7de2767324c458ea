"""In-process vector index of semantic cache entries, one per tenant and served model.

Built lazily from Postgres on the first lookup for a tenant and model, extended on every store in this process,
and topped up from Postgres every LLMOPS_CACHE_INDEX_REFRESH_SECONDS for entries other processes stored. Entries
purged elsewhere drop out when their answer is found missing. Every method runs in a worker thread.
"""

import threading
import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.utils import timezone

from routing.models import CacheEntry, CacheEntryKind

MAX_CANDIDATES = 5


@dataclass(frozen=True, slots=True)
class IndexedEntry:
    entry_id: int
    key_hash: str
    prompt: str
    context_fingerprint: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Candidate:
    entry: IndexedEntry
    similarity: float


class SemanticIndex:
    """One tenant's vectors for one served model. Rows live in a buffer that grows by doubling, so a store
    appends in place instead of copying the whole matrix; a replaced or discarded entry frees its row."""

    def __init__(self, tenant_id: int, served_model: str):
        self.tenant_id = tenant_id
        self.served_model = served_model
        self.entries: list[IndexedEntry | None] = []
        self.rows_by_key: dict[str, int] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.last_entry_id = 0
        self.refreshed_at = float("-inf")
        self.lock = threading.Lock()

    def refresh_if_stale(self) -> None:
        if time.monotonic() - self.refreshed_at < settings.LLMOPS_CACHE_INDEX_REFRESH_SECONDS:
            return
        rows = CacheEntry.objects.filter(
            tenant_id=self.tenant_id,
            served_model=self.served_model,
            kind=CacheEntryKind.SEMANTIC,
            expires_at__gt=timezone.now(),
            pk__gt=self.last_entry_id,
        ).values_list("pk", "key_hash", "normalized_prompt", "context_fingerprint", "expires_at", "embedding")
        loaded = [
            (
                IndexedEntry(pk, key_hash, prompt, context, expires_at.timestamp()),
                np.frombuffer(bytes(embedding), np.float32),
            )
            for pk, key_hash, prompt, context, expires_at, embedding in rows
            if embedding
        ]
        with self.lock:
            self._add(loaded)
            self.refreshed_at = time.monotonic()

    def add(self, entry: IndexedEntry, vector: np.ndarray) -> None:
        with self.lock:
            self._add([(entry, vector.astype(np.float32))])

    def _add(self, loaded: list[tuple[IndexedEntry, np.ndarray]]) -> None:
        for entry, vector in loaded:
            self.last_entry_id = max(self.last_entry_id, entry.entry_id)
            if not self.rows_by_key and not self.entries:
                self.vectors = np.zeros((16, vector.shape[0]), dtype=np.float32)
            # A vector of another size was written by another embedder and cannot be compared with this one's.
            if vector.shape != (self.vectors.shape[1],):
                continue
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
        with self.lock:
            row = self.rows_by_key.pop(key_hash, None)
            if row is not None:
                self.entries[row] = None
                self.vectors[row] = 0

    def search(self, vector: np.ndarray, *, context_fingerprint: str, threshold: float) -> list[Candidate]:
        """Live entries of the same context at or above the threshold, most similar first."""
        with self.lock:
            if not self.rows_by_key:
                return []
            similarities = self.vectors[: len(self.entries)] @ vector.astype(np.float32)
            entries = list(self.entries)
        now = time.time()
        above = np.flatnonzero(similarities >= threshold)
        found = []
        for i in above[np.argsort(-similarities[above])]:
            entry = entries[i]
            if entry is not None and entry.context_fingerprint == context_fingerprint and entry.expires_at > now:
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
