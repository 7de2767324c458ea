"""The response cache's lookups and writes: Redis as the hot tier, Postgres as the durable one.

Every key is scoped by tenant (Redis key prefix, Postgres tenant column, one vector index per tenant and model),
so no lookup can see another tenant's answer. Database and embedding work runs in worker threads, off the event
loop. Anything unreadable in either tier is a miss, never an error.
"""

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from llmops.db import database_sync_to_async
from llmops.redis import async_redis, sync_redis
from routing.cache.embedders import configured_embedder
from routing.cache.guard import near_miss_reason
from routing.cache.index import IndexedEntry, semantic_index, semantic_indexes_forget
from routing.cache.keys import (
    CacheControl,
    SemanticKey,
    canonical_request,
    exact_key,
    is_cacheable,
    semantic_key,
)
from routing.models import CacheEntry, CacheEntryKind
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Hit counters written after the answer went out; held so they are not garbage-collected.
_pending_hit_writes: set[asyncio.Task] = set()


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
    ttl_seconds: int
    request: dict
    key_hash: str
    semantic: SemanticKey | None
    control: CacheControl
    vector: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: dict
    kind: str
    similarity: float | None = None


def cache_request_prepare(
    *,
    tenant_id: int,
    served_model: str,
    body: dict,
    rule_name: str,
    ttl_seconds: int | None,
    allow_nondeterministic: bool,
    control: CacheControl,
) -> CacheRequest | None:
    """None when the request does not use the cache: the rule sets no TTL, the request is not deterministic, or the
    client turned both reading and writing off."""
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
        request=request,
        key_hash=exact_key(tenant_id=tenant_id, served_model=served_model, request=request),
        semantic=semantic_key(request),
        control=control,
    )


def _valid_answer(answer) -> bool:
    return (
        isinstance(answer, dict)
        and isinstance(answer.get("choices"), list)
        and bool(answer["choices"])
        and all(isinstance(choice, dict) and isinstance(choice.get("message"), dict) for choice in answer["choices"])
    )


def _stored_answer(tenant_id: int, served_model: str, key_hash: str) -> tuple[int, dict, datetime] | None:
    row = (
        CacheEntry.objects.filter(
            tenant_id=tenant_id, served_model=served_model, key_hash=key_hash, expires_at__gt=timezone.now()
        )
        .values_list("pk", "answer", "expires_at")
        .first()
    )
    return row if row is not None and _valid_answer(row[1]) else None


async def _answer_for(tenant_id: int, served_model: str, key_hash: str) -> tuple[int, dict] | None:
    """Redis first; on a Redis miss the durable row, copied back to Redis for the time it has left."""
    client = async_redis()
    key = redis_key(tenant_id, served_model, key_hash)
    if client is not None:
        try:
            raw = await client.get(key)
        except Exception:
            logger.warning("cache: Redis unavailable, reading Postgres", exc_info=True)
            raw, client = None, None
        if raw is not None:
            try:
                stored = orjson.loads(raw)
                if _valid_answer(stored.get("answer")):
                    return int(stored["id"]), stored["answer"]
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
                pass
            logger.warning("cache: unreadable Redis entry %s ignored", key)
    row = await database_sync_to_async(_stored_answer)(tenant_id, served_model, key_hash)
    if row is None:
        return None
    entry_id, answer, expires_at = row
    if client is not None:
        ttl = int((expires_at - timezone.now()).total_seconds())
        if ttl > 0:
            await _redis_set(client, key, entry_id, answer, ttl)
    return entry_id, answer


async def _redis_set(client, key: str, entry_id: int, answer: dict, ttl: int) -> None:
    try:
        await client.set(key, orjson.dumps({"id": entry_id, "answer": answer}), ex=ttl)
    except Exception:
        logger.warning("cache: Redis write failed; Postgres still holds the entry", exc_info=True)


def _count_hit(entry_id: int) -> None:
    CacheEntry.objects.filter(pk=entry_id).update(hit_count=F("hit_count") + 1, last_hit_at=timezone.now())


def _note_hit(entry_id: int) -> None:
    task = asyncio.get_running_loop().create_task(database_sync_to_async(_count_hit)(entry_id))
    _pending_hit_writes.add(task)
    task.add_done_callback(_pending_hit_writes.discard)


async def _embed(cache: CacheRequest) -> np.ndarray | None:
    if cache.semantic is None:
        return None
    if cache.vector is None:
        embedder = await asyncio.to_thread(configured_embedder)
        if embedder is None:
            return None
        cache.vector = (await asyncio.to_thread(embedder.embed, [cache.semantic.prompt]))[0]
    return cache.vector


def _semantic_candidates(cache: CacheRequest, vector: np.ndarray):
    index = semantic_index(cache.tenant_id, cache.served_model)
    index.refresh_if_stale()
    return index, index.search(
        vector,
        context_fingerprint=cache.semantic.context_fingerprint,
        threshold=semantic_threshold(cache.rule_name),
    )


async def cache_lookup(cache: CacheRequest) -> CacheHit | None:
    """The exact entry, else the most similar entry of the same context whose details agree, else None."""
    found = await _answer_for(cache.tenant_id, cache.served_model, cache.key_hash)
    if found is not None:
        _note_hit(found[0])
        return CacheHit(answer=found[1], kind="exact")
    vector = await _embed(cache)
    if vector is None:
        return None
    index, candidates = await database_sync_to_async(_semantic_candidates)(cache, vector)
    for candidate in candidates:
        if near_miss_reason(cache.semantic.prompt, candidate.entry.prompt) is not None:
            continue
        found = await _answer_for(cache.tenant_id, cache.served_model, candidate.entry.key_hash)
        if found is None:
            index.discard(candidate.entry.key_hash)
            continue
        _note_hit(found[0])
        return CacheHit(answer=found[1], kind="semantic", similarity=candidate.similarity)
    return None


def _entry_save(cache: CacheRequest, answer: dict, vector: np.ndarray | None) -> CacheEntry:
    now = timezone.now()
    semantic = cache.semantic if vector is not None else None
    entry, _ = CacheEntry.objects.update_or_create(
        tenant_id=cache.tenant_id,
        served_model=cache.served_model,
        key_hash=cache.key_hash,
        defaults={
            "kind": CacheEntryKind.SEMANTIC if semantic else CacheEntryKind.EXACT,
            "request": cache.request,
            "answer": answer,
            "embedding": vector.astype(np.float32).tobytes() if semantic else None,
            "normalized_prompt": semantic.prompt if semantic else "",
            "context_fingerprint": semantic.context_fingerprint if semantic else "",
            "rule_name": cache.rule_name,
            "expires_at": now + timedelta(seconds=cache.ttl_seconds),
            "hit_count": 0,
            "last_hit_at": None,
        },
    )
    return entry


async def cache_store(cache: CacheRequest, *, answer: dict) -> None:
    """Keep a complete, successful answer: durable row first, then Redis and this process's vector index."""
    if not cache.control.write or not _valid_answer(answer):
        return
    vector = await _embed(cache)
    entry = await database_sync_to_async(_entry_save)(cache, answer, vector)
    client = async_redis()
    if client is not None:
        await _redis_set(
            client, redis_key(cache.tenant_id, cache.served_model, cache.key_hash), entry.pk, answer, cache.ttl_seconds
        )
    if vector is not None and cache.semantic is not None:
        semantic_index(cache.tenant_id, cache.served_model).add(
            IndexedEntry(
                entry.pk,
                cache.key_hash,
                cache.semantic.prompt,
                cache.semantic.context_fingerprint,
                entry.expires_at.timestamp(),
            ),
            vector,
        )


def _redis_delete(keys: list[str]) -> None:
    client = sync_redis()
    if client is None or not keys:
        return
    try:
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except Exception:
        logger.warning("cache: Redis delete failed; entries expire there by their TTL", exc_info=True)


@transaction.atomic
def cache_entries_purge(*, tenant: Tenant, model: str = "", rule: str = "", older_than: timedelta | None = None) -> int:
    """Delete a tenant's entries, optionally only of one served model, one rule, or created before an age."""
    entries = CacheEntry.objects.for_tenant(tenant)
    if model:
        entries = entries.filter(served_model=model)
    if rule:
        entries = entries.filter(rule_name=rule)
    if older_than is not None:
        entries = entries.filter(created_at__lt=timezone.now() - older_than)
    return cache_entries_delete(entries=entries)


def cache_entries_delete(*, entries) -> int:
    """Delete these entries (a queryset already scoped by the caller) from Postgres, Redis and vector indexes."""
    doomed = list(entries.values_list("pk", "tenant_id", "served_model", "key_hash"))
    CacheEntry.objects.filter(pk__in=[pk for pk, *_ in doomed]).delete()
    _redis_delete([redis_key(tenant_id, model, key_hash) for _, tenant_id, model, key_hash in doomed])
    for tenant_id in {tenant_id for _, tenant_id, *_ in doomed}:
        semantic_indexes_forget(tenant_id)
    return len(doomed)


def cache_entries_expire(*, now: datetime | None = None) -> int:
    """Delete every tenant's expired entries (Redis drops its copies by TTL). A cross-tenant job."""
    return cache_entries_delete(entries=CacheEntry.objects.filter(expires_at__lte=now or timezone.now()))
