"""The semantic search in Postgres (pgvector): scoped to one tenant, model and context, never an expired entry, still
exact for a tenant with a few entries among many of other tenants', and no vectors held by the process."""

import os
import subprocess
import sys
import threading
from datetime import timedelta

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.redis import sync_redis
from routing.cache import index, store
from routing.cache.index import stored_matches
from routing.cache.sealed import seal_prompt
from routing.cache.store import cache_entry_build, cache_writes_flush
from routing.models import CacheEntry, CacheEntryKind
from tenants.scoping import UnscopedQueryError
from tests.cache.conftest import cache_request, chat, stored_answer
from tests.factories import TenantFactory

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the search in the database needs PostgreSQL with pgvector"
)

DIMENSIONS = 384
NO_STORE = {"x-llmops-cache": "no-store"}


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def axis(i: int) -> np.ndarray:
    vector = np.zeros(DIMENSIONS, dtype=np.float32)
    vector[i] = 1
    return vector


def entry(tenant, key: str, vector, *, model="m", context="ctx", expires_in=timedelta(minutes=10)) -> CacheEntry:
    return CacheEntry.objects.create(
        tenant=tenant,
        served_model=model,
        key_hash=key,
        kind=CacheEntryKind.SEMANTIC,
        answer_encrypted="unused",
        embedding=unit(vector),
        prompt_encrypted=seal_prompt(f"prompt {key}"),
        context_fingerprint=context,
        expires_at=timezone.now() + expires_in,
    )


def nearest(tenant, vector, *, model="m", context="ctx", threshold=0.5) -> list[str]:
    found = stored_matches(
        tenant_id=tenant.pk,
        served_model=model,
        key_hash="",
        context_fingerprint=context,
        vector=unit(vector),
        threshold=threshold,
    )
    return [candidate.entry.key_hash for candidate in found.candidates]


def test_only_the_tenants_live_entries_of_the_model_and_context_are_found(db):
    acme, globex = TenantFactory(), TenantFactory()
    near = axis(0) + 0.1 * axis(1)
    entry(acme, "acme", axis(0))
    entry(globex, "globex", axis(0))
    entry(acme, "other-model", axis(0), model="m2")
    entry(acme, "other-context", axis(0), context="ctx2")
    entry(acme, "expired", axis(0), expires_in=timedelta(seconds=-1))
    entry(acme, "far", axis(2))

    assert nearest(acme, near) == ["acme"]
    assert nearest(globex, near) == ["globex"]
    assert nearest(acme, near, model="m2") == ["other-model"]
    assert nearest(acme, near, context="ctx2") == ["other-context"]
    assert nearest(TenantFactory(), near) == []


def test_candidates_come_most_similar_first_and_only_above_the_threshold(db):
    acme = TenantFactory()
    for i, weight in enumerate([0.2, 0.6, 0.4]):
        entry(acme, f"e{i}", axis(0) + weight * axis(1))
    entry(acme, "below", axis(1))

    assert nearest(acme, axis(0) + 0.5 * axis(1), threshold=0.9) == ["e1", "e2", "e0"]


def test_a_lookup_is_one_statement_without_a_transaction(db):
    acme = TenantFactory()
    entry(acme, "acme", axis(0))
    # A connection's first lookup registers pgvector's types on it, once.
    nearest(acme, axis(0))

    with CaptureQueriesContext(connection) as queries:
        assert nearest(acme, axis(0) + 0.1 * axis(1)) == ["acme"]
    assert len(queries.captured_queries) == 1


def test_every_connection_starts_with_the_hnsw_settings_a_lookup_needs(db):
    with connection.cursor() as cursor:
        # Set before pgvector is loaded, they hold once a vector operation has loaded it.
        cursor.execute("SELECT '[1,0]'::vector <=> '[0,1]'")
        cursor.execute("SELECT current_setting('hnsw.iterative_scan'), current_setting('hnsw.ef_search')")
        assert cursor.fetchone() == ("relaxed_order", str(settings.LLMOPS_CACHE_HNSW_EF_SEARCH))


def test_without_the_pool_connections_start_without_options_pgbouncer_would_refuse():
    # PgBouncer answers "unsupported startup parameter: options" to any connection carrying them.
    script = "from django.conf import settings; print(settings.DATABASES['default'].get('OPTIONS', {}).get('options'))"
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "llmops.settings"}
    read = [sys.executable, "-c", f"import django; django.setup(); {script}"]
    pooled = subprocess.run(read, env=environment, capture_output=True, text=True, check=True).stdout
    unpooled = subprocess.run(
        read, env={**environment, "DB_POOL_MAX_SIZE": "0"}, capture_output=True, text=True, check=True
    ).stdout
    assert "hnsw.iterative_scan=relaxed_order" in pooled
    assert unpooled.strip().splitlines()[-1] == "None"


def test_a_connection_without_iterative_scans_is_warned_about(db, caplog):
    connection.ensure_connection()
    raw = connection.connection
    raw.execute("SET hnsw.iterative_scan = off")
    try:
        with caplog.at_level("WARNING", logger="routing.cache.index"):
            index._iterative_scan_check(raw)
        assert any("hnsw.iterative_scan is 'off'" in record.getMessage() for record in caplog.records)
    finally:
        raw.execute("RESET hnsw.iterative_scan")


def test_a_store_sends_its_vector_as_a_binary_parameter_of_one_statement(db):
    acme = TenantFactory()
    vector = unit(axis(0) + 0.3 * axis(1))
    row = CacheEntry(
        tenant=acme,
        served_model="m",
        key_hash="k",
        kind=CacheEntryKind.SEMANTIC,
        answer_encrypted="sealed",
        embedding=vector,
        prompt_encrypted=seal_prompt("prompt"),
        context_fingerprint="ctx",
        expires_at=timezone.now() + timedelta(minutes=10),
    )

    with CaptureQueriesContext(connection) as queries:
        store._upsert([row])

    writes = [query["sql"] for query in queries.captured_queries if "INSERT" in query["sql"]]
    assert len(writes) == 1
    # The 384 floats as text would be in the statement.
    assert str(float(vector[0]))[:6] not in writes[0]
    stored = CacheEntry.objects.for_tenant(acme).get(key_hash="k")
    np.testing.assert_array_equal(stored.embedding, vector)
    assert stored.created_at is not None and stored.kind == CacheEntryKind.SEMANTIC


def test_a_lookup_without_a_tenant_is_refused(db):
    with pytest.raises(UnscopedQueryError):
        stored_matches(
            tenant_id=None, served_model="m", key_hash="k", context_fingerprint="ctx", vector=axis(0), threshold=0.5
        )


def test_a_vector_of_a_dimension_without_an_hnsw_index_is_searched_exactly(db):
    acme = TenantFactory()
    entry(acme, "small", [1, 0, 0, 0])
    entry(acme, "other-dimension", axis(0))

    assert nearest(acme, [1, 0.1, 0, 0]) == ["small"]


def test_a_tenant_with_three_entries_among_100k_of_other_tenants_finds_its_own(db):
    """Other tenants' entries sit nearer the query than the tenant's own, so a search that took the graph's nearest
    rows and filtered them afterwards would find none. 2,000 of them are in the HNSW index (more than any candidate
    list it keeps; each costs an HNSW insert, about half a millisecond here), the other 98,000 are exact-only rows,
    as most of a busy cache's are, and weigh on the planner's estimates."""
    acme, crowd = TenantFactory(), TenantFactory()
    query = unit(axis(0) + 0.3 * axis(1))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO routing_cacheentry (tenant_id, served_model, key_hash, kind, answer_encrypted, embedding,
                prompt_encrypted, context_fingerprint, rule_name, created_at, expires_at, hit_count)
            SELECT %(tenant)s, 'm', 'crowd-' || n, CASE WHEN n <= 2000 THEN 'semantic' ELSE 'exact' END, 'unused',
                CASE WHEN n <= 2000 THEN %(vector)s::vector END, %(prompt)s, 'ctx', '', now(),
                now() + interval '10 minutes', 0
            FROM generate_series(1, 100000) AS n
            """,
            {"tenant": crowd.pk, "vector": str(query.tolist()), "prompt": seal_prompt("prompt crowd")},
        )
        cursor.execute("ANALYZE routing_cacheentry")
    for i, weight in enumerate([0.5, 0.8, 1.2]):
        entry(acme, f"acme-{i}", axis(0) + weight * axis(1))

    assert nearest(acme, query) == ["acme-0", "acme-1", "acme-2"]
    assert len(nearest(crowd, query)) == index.MAX_CANDIDATES


def test_an_expired_entry_is_never_served_before_the_expiry_task_deletes_it(gateway, acme_caching, embedder):
    cache = cache_request(acme_caching, "What is the capital of France?")
    cache_entry_build(
        cache,
        answer=stored_answer("Paris."),
        vector=embedder.embed([cache.semantic.prompt])[0],
        expires_at=timezone.now() - timedelta(seconds=1),
    ).save()

    for prompt in ("What is the capital of France?", "what's France's capital city"):
        assert chat(gateway, acme_caching, prompt, headers=NO_STORE).headers["x-llmops-cache"] == "miss"
    assert CacheEntry.objects.for_tenant(acme_caching.tenant).count() == 1


def test_another_tenant_never_gets_the_answer_for_the_same_prompt_and_model(
    gateway, acme_caching, globex_caching, embedder
):
    cache = cache_request(globex_caching, "What is the capital of France?")
    cache.tenant_id = acme_caching.tenant.pk
    # Acme's entry, under the very model name globex is served.
    cache_entry_build(
        cache,
        answer=stored_answer("Acme's answer."),
        vector=embedder.embed([cache.semantic.prompt])[0],
        expires_at=timezone.now() + timedelta(minutes=10),
    ).save()

    for prompt in ("What is the capital of France?", "what's France's capital city"):
        reply = chat(gateway, globex_caching, prompt, headers=NO_STORE)
        assert reply.headers["x-llmops-cache"] == "miss"
        assert reply.json()["choices"][0]["message"]["content"] != "Acme's answer."


def test_no_process_keeps_an_index_of_vectors(gateway, acme_caching):
    chat(gateway, acme_caching, "What is the capital of France?")
    assert chat(gateway, acme_caching, "what's France's capital city").headers["x-llmops-cache"] == "hit-semantic"
    cache_writes_flush()
    assert chat(gateway, acme_caching, "tell me the capital of France").headers["x-llmops-cache"] == "hit-semantic"

    assert index._indexes == {}


@pytest.fixture
def request_path_queries(monkeypatch):
    """The SQL statements the request path runs (any thread but the cache writer's and the ledger drainer's)."""
    seen: list[str] = []
    execute = CursorWrapper._execute_with_wrappers

    def counting(self, sql, *args, **kwargs):
        if threading.current_thread().name not in ("cache-writer", "ledger-drainer"):
            seen.append(sql)
        return execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counting)
    return seen


def test_past_redis_a_lookup_asks_postgres_once_for_the_exact_row_and_the_nearest(
    gateway, acme_caching, request_path_queries
):
    """A semantic hit reads its answer with the search, and an exact entry Redis lost comes from the same query."""
    question = "What is the capital of France?"
    chat(gateway, acme_caching, question)
    cache_writes_flush()

    request_path_queries.clear()
    assert chat(gateway, acme_caching, "what's France's capital city").headers["x-llmops-cache"] == "hit-semantic"
    assert len(request_path_queries) == 1 and "UNION ALL" in request_path_queries[0]

    entry = CacheEntry.objects.unscoped().get()
    copy = store.redis_key(acme_caching.tenant.pk, entry.served_model, entry.key_hash)
    sync_redis().delete(copy)
    request_path_queries.clear()
    assert chat(gateway, acme_caching, question).headers["x-llmops-cache"] == "hit-exact"
    assert len(request_path_queries) == 1 and "UNION ALL" in request_path_queries[0]
    assert sync_redis().exists(copy)
