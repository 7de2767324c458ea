"""routing 0009 swaps the embedding column for a pgvector one without rewriting a row, and keeps the answers; 0010
marks those entries exact-only and builds the indexes concurrently; 0009 refuses a pgvector older than 0.8."""

import importlib
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone

BEFORE = [("routing", "0008_model_price_versions")]
AFTER = [("routing", "0010_cache_indexes_built_concurrently")]

on_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="pgvector is PostgreSQL's")


def _indexes() -> dict[str, bool]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT index.relname, pg_index.indisvalid FROM pg_index
            JOIN pg_class index ON index.oid = pg_index.indexrelid
            WHERE pg_index.indrelid = 'routing_cacheentry'::regclass
            """
        )
        return dict(cursor.fetchall())


@on_postgres
def test_old_embeddings_are_dropped_the_answers_kept_and_the_indexes_built(migrated):
    apps = migrated(BEFORE)
    tenant = apps.get_model("tenants", "Tenant").objects.create(name="acme", slug="acme")
    CacheEntry = apps.get_model("routing", "CacheEntry")
    fields = {"tenant_id": tenant.pk, "served_model": "m", "expires_at": timezone.now() + timedelta(hours=1)}
    semantic = CacheEntry.objects.create(
        key_hash="semantic",
        kind="semantic",
        answer_encrypted="sealed answer",
        embedding=np.ones(384, dtype=np.float32).tobytes(),
        prompt_encrypted="sealed prompt",
        context_fingerprint="ctx",
        **fields,
    )
    exact = CacheEntry.objects.create(key_hash="exact", kind="exact", answer_encrypted="sealed", **fields)

    CacheEntry = migrated(AFTER).get_model("routing", "CacheEntry")
    kept = CacheEntry.objects.get(pk=semantic.pk)
    assert (kept.kind, kept.answer_encrypted, kept.embedding, kept.prompt_encrypted) == (
        "exact",
        "sealed answer",
        None,
        "",
    )
    assert CacheEntry.objects.get(pk=exact.pk).answer_encrypted == "sealed"
    indexes = _indexes()
    for name in ("cache_entry_semantic_context", "cache_entry_hnsw_384", "cache_entry_hnsw_1536"):
        assert indexes.get(name) is True, name
    assert "cache_entry_semantic_scan" not in indexes

    migrated(BEFORE)
    assert "cache_entry_semantic_scan" in _indexes()


def test_the_index_migration_runs_outside_a_transaction():
    """CREATE INDEX CONCURRENTLY, which lets cache reads and writes go on while the indexes build, needs it."""
    migration = importlib.import_module("routing.migrations.0010_cache_indexes_built_concurrently")
    assert migration.Migration.atomic is False


@pytest.mark.parametrize("version", ["0.5.1", "0.7.4"])
def test_a_pgvector_without_iterative_scans_is_refused_with_what_to_do(version):
    migration = importlib.import_module("routing.migrations.0009_cache_embeddings_in_pgvector")
    with pytest.raises(RuntimeError, match=rf"pgvector 0\.8 or later .* has {version}.*ALTER EXTENSION vector UPDATE"):
        migration.pgvector_version_check(version)


@pytest.mark.parametrize("version", ["0.8.0", "0.8.6", "1.0.0", "0.10.0"])
def test_pgvector_0_8_and_later_are_accepted(version):
    migration = importlib.import_module("routing.migrations.0009_cache_embeddings_in_pgvector")
    migration.pgvector_version_check(version)
