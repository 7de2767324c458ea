"""Stores off the response path: the answer goes out before its cache write, this process finds what it is still
writing (exact and by meaning, never for another tenant), and the writer's batched upserts are idempotent."""

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.db.backends.utils import CursorWrapper

from core.redis import sync_redis
from routing.cache import store
from routing.cache.index import stored_matches
from routing.cache.sealed import open_prompt
from routing.cache.store import (
    cache_entries_purge,
    cache_lookup,
    cache_store,
    cache_writes_flush,
    redis_key,
)
from routing.models import CacheEntry, CacheEntryKind
from routing.services import tenant_model_access_set
from tenants.models import Tenant
from tests.cache.conftest import cache_request, cache_writes_blocked, chat, stored_answer
from tests.loops import run

QUESTION = "What is the capital of France?"
PARAPHRASE = "what's France's capital city"


def share_acme_model(acme, globex) -> dict:
    """globex may use acme's model, so only the tenant tells their requests apart."""
    tenant_model_access_set(tenant=globex.tenant, allowed_models=[acme.small], default_model=acme.small)
    return {"model": acme.small.name}


def test_the_answer_does_not_wait_for_its_cache_write_and_this_process_finds_it(
    gateway, acme_caching, globex_caching, mock_upstream
):
    as_globex = {**share_acme_model(acme_caching, globex_caching), "headers": {"x-llmops-cache": "no-store"}}
    with cache_writes_blocked():
        first = chat(gateway, acme_caching, QUESTION)
        served = mock_upstream.app.requests_served
        exact = chat(gateway, acme_caching, QUESTION)
        semantic = chat(gateway, acme_caching, PARAPHRASE)
        other_tenant = [chat(gateway, globex_caching, prompt, **as_globex) for prompt in (QUESTION, PARAPHRASE)]
        assert not CacheEntry.objects.unscoped().exists()

    assert first.headers["x-llmops-cache"] == "miss"
    assert (exact.headers["x-llmops-cache"], semantic.headers["x-llmops-cache"]) == ("hit-exact", "hit-semantic")
    assert exact.json()["choices"] == semantic.json()["choices"] == first.json()["choices"]
    assert [reply.headers["x-llmops-cache"] for reply in other_tenant] == ["miss", "miss"]
    assert mock_upstream.app.requests_served == served + 2
    cache_writes_flush()
    entry = CacheEntry.objects.unscoped().get()
    assert (entry.tenant, entry.kind, entry.hit_count) == (acme_caching.tenant, CacheEntryKind.SEMANTIC, 2)
    assert sync_redis().exists(redis_key(acme_caching.tenant.pk, entry.served_model, entry.key_hash))


def test_stores_of_one_key_queued_together_leave_one_row_per_tenant(gateway, acme_caching, globex_caching, caplog):
    shared = share_acme_model(acme_caching, globex_caching)
    bypass = {"headers": {"x-llmops-cache": "bypass"}, **shared}
    with cache_writes_blocked():
        # The first write waits on the lock; the others queue behind it and go to Postgres as one batch.
        for setup in (acme_caching, acme_caching, globex_caching, acme_caching, globex_caching):
            assert chat(gateway, setup, QUESTION, **bypass).headers["x-llmops-cache"] == "bypass"
    cache_writes_flush()

    entries = CacheEntry.objects.unscoped().order_by("tenant_id")
    assert [entry.tenant for entry in entries] == [acme_caching.tenant, globex_caching.tenant]
    assert all(entry.kind == CacheEntryKind.SEMANTIC and entry.hit_count == 0 for entry in entries)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert chat(gateway, acme_caching, QUESTION, **shared).headers["x-llmops-cache"] == "hit-exact"
    assert chat(gateway, globex_caching, QUESTION, **shared).headers["x-llmops-cache"] == "hit-exact"


def test_an_entry_postgres_refuses_costs_only_itself(gateway, acme, embedder, caplog):
    deleted_tenant = dataclasses.replace(
        cache_request(acme, "Print a NUL byte"), tenant_id=Tenant.objects.unscoped().order_by("pk").last().pk + 1000
    )
    with cache_writes_blocked():
        cache_store(cache_request(acme, "How do I reset my password?"), answer=stored_answer("Use the reset link."))
        # A tenant deleted while its answer was queued: this row fails, queued in one batch with the next one.
        cache_store(deleted_tenant, answer=stored_answer("here: \x00"))
        cache_store(
            cache_request(acme, "Which plans include single sign-on?"), answer=stored_answer("Business and up.")
        )
    cache_writes_flush()

    assert sorted(
        open_prompt(sealed) for sealed in CacheEntry.objects.unscoped().values_list("prompt_encrypted", flat=True)
    ) == [
        "How do I reset my password?",
        "Which plans include single sign-on?",
    ]
    assert "not stored" in caplog.text
    assert run(cache_lookup(deleted_tenant)) is None
    assert run(cache_lookup(cache_request(acme, "How do I reset my password?"))).answer == stored_answer(
        "Use the reset link."
    )


def test_an_answer_stored_without_a_lookup_is_embedded_later_and_found_by_meaning(gateway, acme_caching):
    bypassed = chat(gateway, acme_caching, QUESTION, headers={"x-llmops-cache": "bypass"})
    paraphrase = chat(gateway, acme_caching, PARAPHRASE)

    assert bypassed.headers["x-llmops-cache"] == "bypass"
    assert paraphrase.headers["x-llmops-cache"] == "hit-semantic"
    cache_writes_flush()
    assert CacheEntry.objects.unscoped().get().kind == CacheEntryKind.SEMANTIC


def test_a_store_written_while_the_lookup_queries_postgres_is_still_found(gateway, acme_caching, monkeypatch):
    """The writer thread commits a pending store, and takes it off the pending map, after the lookup's query read the
    table and before the lookup looks at the pending map: the store is in neither unless the map is read first."""
    queried, written = threading.Event(), threading.Event()

    def matches_then_written(**query):
        matches = stored_matches(**query)
        queried.set()
        assert written.wait(30)
        return matches

    with ThreadPoolExecutor(1) as pool:
        with cache_writes_blocked():
            first = chat(gateway, acme_caching, QUESTION)
            monkeypatch.setattr(store, "stored_matches", matches_then_written)
            paraphrase = pool.submit(chat, gateway, acme_caching, PARAPHRASE)
            assert queried.wait(30)
        cache_writes_flush()
        written.set()

    assert paraphrase.result().headers["x-llmops-cache"] == "hit-semantic"
    assert paraphrase.result().json()["choices"] == first.json()["choices"]


def test_a_purge_deletes_what_this_process_was_still_writing(gateway, acme, settings):
    settings.LLMOPS_CACHE_EMBEDDER = ""
    cache = cache_request(acme, QUESTION)
    cache_store(cache, answer=stored_answer("Paris."))
    assert cache_entries_purge(tenant=acme.tenant) == 1

    cache_writes_flush()
    assert not CacheEntry.objects.unscoped().exists()
    assert not sync_redis().exists(redis_key(acme.tenant.pk, cache.served_model, cache.key_hash))
    assert run(cache_lookup(cache)) is None


def test_hit_counts_are_held_back_and_written_once_per_entry_when_due(gateway, acme_caching, monkeypatch):
    """Hits on one entry within the delay become one update of its row, written by the timer without a flush."""
    monkeypatch.setattr(store, "HIT_COUNT_DELAY_SECONDS", 3.0)
    first = chat(gateway, acme_caching, QUESTION)
    cache_writes_flush()
    updates: list[str] = []
    execute = CursorWrapper._execute_with_wrappers

    def counting(self, sql, *args, **kwargs):
        if threading.current_thread().name == "cache-writer" and sql.startswith("UPDATE"):
            updates.append(sql)
        return execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counting)
    for _ in range(5):
        assert chat(gateway, acme_caching, QUESTION).json()["choices"] == first.json()["choices"]
    entry = CacheEntry.objects.unscoped().get()
    assert entry.hit_count == 0

    # The statement is seen before it runs and commits: wait for the row itself.
    deadline = time.monotonic() + 30
    while not entry.hit_count and time.monotonic() < deadline:
        time.sleep(0.1)
        entry.refresh_from_db()
    assert (len(updates), entry.hit_count) == (1, 5)
