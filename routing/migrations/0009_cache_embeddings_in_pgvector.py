"""Cache entry embeddings move to a pgvector `vector` column on PostgreSQL, searched in the database (HNSW indexes,
built by migration 0010), so every gateway process shares one index instead of holding its own copy in memory.

The extension is created here when the database role may create it (`CREATE EXTENSION IF NOT EXISTS vector`);
where it may not (most managed services let the database owner, or a DBA, run that one statement), the migration
stops with what to ask for. An extension that already exists needs no privilege, but it must be pgvector 0.8 or
later: the lookup relies on iterative HNSW scans (`hnsw.iterative_scan`), and on 0.5 to 0.7 every semantic lookup
would fail.

Old embeddings are dropped, not converted: converting rewrote every row while ALTER TABLE's ACCESS EXCLUSIVE lock
was held (about two minutes per 100k rows), and running gateways' cache reads and writes waited all that time. Here
the column is dropped and added again in one ALTER TABLE, which touches no row, so the lock lasts milliseconds. The
entries keep their answers and still answer exact repeats; migration 0010 marks them exact-only and builds the
indexes without blocking writes. On SQLite the column stays float32 bytes and nothing else changes.
"""

from django.db import DatabaseError, migrations

import routing.models.cache

# The first pgvector with iterative index scans (hnsw.iterative_scan), which a tenant-filtered lookup needs.
PGVECTOR_MINIMUM = (0, 8)


def _on_postgres(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


def pgvector_version_check(version: str) -> None:
    parts = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if parts < PGVECTOR_MINIMUM:
        raise RuntimeError(
            f"The semantic cache needs pgvector {'.'.join(map(str, PGVECTOR_MINIMUM))} or later (iterative HNSW "
            f"scans); this database has {version}. Install a newer pgvector on the server, run "
            "`ALTER EXTENSION vector UPDATE;` in this database, then run migrate again."
        )


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
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()
    pgvector_version_check(version)


def embedding_column_to_vector(apps, schema_editor):
    if _on_postgres(schema_editor):
        schema_editor.execute("ALTER TABLE routing_cacheentry DROP COLUMN embedding, ADD COLUMN embedding vector NULL")


def embedding_column_to_bytes(apps, schema_editor):
    if _on_postgres(schema_editor):
        schema_editor.execute("ALTER TABLE routing_cacheentry DROP COLUMN embedding, ADD COLUMN embedding bytea NULL")


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0008_model_price_versions"),
    ]

    operations = [
        migrations.RunPython(vector_extension_create, migrations.RunPython.noop),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(embedding_column_to_vector, embedding_column_to_bytes)],
            state_operations=[
                migrations.AlterField(
                    model_name="cacheentry",
                    name="embedding",
                    field=routing.models.cache.EmbeddingField(
                        blank=True, editable=False, help_text="Unit-length vector, semantic only.", null=True
                    ),
                ),
            ],
        ),
        migrations.RemoveIndex(model_name="cacheentry", name="cache_entry_semantic_scan"),
    ]
