"""Cache entry embeddings move to a pgvector `vector` column on PostgreSQL, searched in the database through HNSW
indexes (cosine), so every gateway process shares one index instead of holding its own copy in memory.

The extension is created here when the database role may create it (`CREATE EXTENSION IF NOT EXISTS vector`);
where it may not (most managed services let the database owner, or a DBA, run that one statement), the migration
stops with what to ask for. An extension that already exists needs no privilege.

The column takes vectors of any dimension (one embedder may be swapped for another), and HNSW needs a fixed one:
there is one partial HNSW index per dimension of the embedders the project ships or documents, on
`embedding::vector(N)` where `vector_dims(embedding) = N` (384: all-MiniLM-L6-v2; 1536: OpenAI's
text-embedding-3-small and ada-002). A lookup with a vector of another dimension still works, by exact distance over
the tenant's entries of its context (routing/cache/index.py).

Existing embeddings are converted, not dropped. On SQLite the column stays float32 bytes and nothing else changes.
"""

import numpy as np
from django.db import DatabaseError, migrations, models

import routing.models.cache

INDEXED_DIMENSIONS = (384, 1536)
COPY_BATCH = 1000


def _on_postgres(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


def vector_extension_create(apps, schema_editor):
    if not _on_postgres(schema_editor):
        return
    try:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except DatabaseError as error:
        raise RuntimeError(
            "The semantic cache needs the pgvector extension in this database, and this role may not create it. "
            "Have the database owner or an administrator run `CREATE EXTENSION IF NOT EXISTS vector;` in it "
            "(managed services: enable `vector` / pgvector first), then run migrate again. "
            f"PostgreSQL said: {error}"
        ) from error


def _copy(apps, source: str, target: str, convert) -> None:
    entries = apps.get_model("routing", "CacheEntry").objects
    last_pk = 0
    while True:
        batch = list(entries.filter(pk__gt=last_pk, **{f"{source}__isnull": False}).order_by("pk")[:COPY_BATCH])
        if not batch:
            return
        for entry in batch:
            setattr(entry, target, convert(getattr(entry, source)))
        entries.bulk_update(batch, [target])
        last_pk = batch[-1].pk


def embeddings_copy(apps, schema_editor):
    """The old column's float32 bytes into the new column, a batch at a time."""
    _copy(apps, "embedding", "vector", lambda stored: np.frombuffer(bytes(stored), dtype=np.float32))


def embeddings_copy_back(apps, schema_editor):
    _copy(apps, "vector", "embedding", lambda vector: np.asarray(vector, dtype=np.float32).tobytes())


def hnsw_indexes_create(apps, schema_editor):
    if not _on_postgres(schema_editor):
        return
    for dimensions in INDEXED_DIMENSIONS:
        schema_editor.execute(
            f"CREATE INDEX cache_entry_hnsw_{dimensions} ON routing_cacheentry "
            f"USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops) "
            f"WHERE vector_dims(embedding) = {dimensions}"
        )


def hnsw_indexes_drop(apps, schema_editor):
    if not _on_postgres(schema_editor):
        return
    for dimensions in INDEXED_DIMENSIONS:
        schema_editor.execute(f"DROP INDEX IF EXISTS cache_entry_hnsw_{dimensions}")


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0008_model_price_versions"),
    ]

    operations = [
        migrations.RunPython(vector_extension_create, migrations.RunPython.noop),
        migrations.AddField(
            model_name="cacheentry",
            name="vector",
            field=routing.models.cache.EmbeddingField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(embeddings_copy, embeddings_copy_back),
        migrations.RemoveField(model_name="cacheentry", name="embedding"),
        migrations.RenameField(model_name="cacheentry", old_name="vector", new_name="embedding"),
        migrations.AlterField(
            model_name="cacheentry",
            name="embedding",
            field=routing.models.cache.EmbeddingField(
                blank=True, editable=False, help_text="Unit-length vector, semantic only.", null=True
            ),
        ),
        migrations.RunPython(hnsw_indexes_create, hnsw_indexes_drop),
        migrations.RemoveIndex(model_name="cacheentry", name="cache_entry_semantic_scan"),
        migrations.AddIndex(
            model_name="cacheentry",
            index=models.Index(
                condition=models.Q(kind="semantic"),
                fields=["tenant", "served_model", "context_fingerprint"],
                name="cache_entry_semantic_context",
            ),
        ),
    ]
