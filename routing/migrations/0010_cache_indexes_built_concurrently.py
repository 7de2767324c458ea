"""The semantic cache's indexes, built without blocking the gateways: a non-atomic migration whose PostgreSQL
indexes are built with CREATE INDEX CONCURRENTLY, so cache reads and writes go on while they build (it waits for
transactions already open on the table, and takes about two minutes per 100k semantic rows on two cores).

First, the entries whose embedding migration 0009 dropped become exact-only: they keep their answers for exact
repeats (an UPDATE, which locks only those rows).

Then the btree index a lookup filters on (a tenant's semantic entries of one model and context; where they are
few, the planner reads them there and sorts them exactly), and on PostgreSQL one partial HNSW index (cosine) per
dimension of the embedders the project ships or documents, on `embedding::vector(N)` where `vector_dims(embedding)
= N` (384: all-MiniLM-L6-v2; 1536: OpenAI's text-embedding-3-small and ada-002); HNSW needs a fixed dimension and
the column takes any. A lookup with a vector of another dimension still works, by exact distance over the tenant's
entries of its context (routing/cache/index.py).

A build cut short leaves an invalid index behind; running migrate again drops it and builds it anew.
"""

from django.db import migrations, models

INDEXED_DIMENSIONS = (384, 1536)
SEMANTIC_CONTEXT_INDEX = models.Index(
    condition=models.Q(kind="semantic"),
    fields=["tenant", "served_model", "context_fingerprint"],
    name="cache_entry_semantic_context",
)


def _on_postgres(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


def entries_without_embedding_to_exact(apps, schema_editor):
    apps.get_model("routing", "CacheEntry").objects.filter(kind="semantic", embedding__isnull=True).update(
        kind="exact", prompt_encrypted="", context_fingerprint=""
    )


def _index_build(schema_editor, name: str, definition: str) -> None:
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY {name} ON routing_cacheentry {definition}")


def semantic_context_index_create(apps, schema_editor):
    model = apps.get_model("routing", "CacheEntry")
    if not _on_postgres(schema_editor):
        schema_editor.add_index(model, SEMANTIC_CONTEXT_INDEX)
        return
    _index_build(
        schema_editor,
        SEMANTIC_CONTEXT_INDEX.name,
        "(tenant_id, served_model, context_fingerprint) WHERE kind = 'semantic'",
    )


def semantic_context_index_drop(apps, schema_editor):
    model = apps.get_model("routing", "CacheEntry")
    if not _on_postgres(schema_editor):
        schema_editor.remove_index(model, SEMANTIC_CONTEXT_INDEX)
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SEMANTIC_CONTEXT_INDEX.name}")


def hnsw_indexes_create(apps, schema_editor):
    if not _on_postgres(schema_editor):
        return
    for dimensions in INDEXED_DIMENSIONS:
        _index_build(
            schema_editor,
            f"cache_entry_hnsw_{dimensions}",
            f"USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops) "
            f"WHERE vector_dims(embedding) = {dimensions}",
        )


def hnsw_indexes_drop(apps, schema_editor):
    if not _on_postgres(schema_editor):
        return
    for dimensions in INDEXED_DIMENSIONS:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS cache_entry_hnsw_{dimensions}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("routing", "0009_cache_embeddings_in_pgvector"),
    ]

    operations = [
        migrations.RunPython(entries_without_embedding_to_exact, migrations.RunPython.noop),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(semantic_context_index_create, semantic_context_index_drop)],
            state_operations=[migrations.AddIndex(model_name="cacheentry", index=SEMANTIC_CONTEXT_INDEX)],
        ),
        migrations.RunPython(hnsw_indexes_create, hnsw_indexes_drop),
    ]
