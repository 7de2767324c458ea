"""The semantic lookup's own latency in Postgres (pgvector HNSW), by how many entries the table holds.

For each size it fills the cache table with random 384-dimension vectors (all-MiniLM-L6-v2's size; random
vectors are the HNSW graph's worst case) spread over 10 tenants, builds the HNSW index once (inserting row by row
would maintain it per row, far slower), then times `stored_matches` from this process: for a large tenant (a tenth
of the rows, one context: the HNSW path) and for a tenant with 3 entries (the btree path). The in-process index's
numpy search over the large tenant's rows is printed for comparison. A figure, not a test.

    .venv/bin/python bench/vector_lookup.py --database-url postgres://postgres@127.0.0.1:5432/bench_pgvector
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import migrated_django  # noqa: E402

DIMENSIONS = 384
TENANTS = 10


def unit_rows(rng, count: int) -> np.ndarray:
    rows = rng.standard_normal((count, DIMENSIONS)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fill(size: int, tenants, small, rng) -> None:
    from django.db import connection
    from django.utils import timezone

    from routing.cache.sealed import seal_prompt
    from routing.models import CacheEntry, CacheEntryKind

    prompt = seal_prompt("a cached question")
    expires_at = timezone.now() + timedelta(hours=1)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE routing_cacheentry")
        cursor.execute("DROP INDEX IF EXISTS cache_entry_hnsw_384")
        # Random vectors made in the database (cosine ignores their length).
        cursor.execute(
            """
            INSERT INTO routing_cacheentry (tenant_id, served_model, key_hash, kind, answer_encrypted, embedding,
                prompt_encrypted, context_fingerprint, rule_name, created_at, expires_at, hit_count)
            SELECT (%(tenants)s::bigint[])[1 + n %% %(count)s], 'm', 'k' || n, 'semantic', 'x',
                (SELECT array_agg(random() - 0.5)::real[]::vector FROM generate_series(1, %(dimensions)s) WHERE n > 0),
                %(prompt)s, 'ctx', '', now(), %(expires)s, 0
            FROM generate_series(1, %(size)s) AS n
            """,
            {
                "tenants": [tenant.pk for tenant in tenants],
                "count": len(tenants),
                "dimensions": DIMENSIONS,
                "prompt": prompt,
                "expires": expires_at,
                "size": size,
            },
        )
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute(
            "CREATE INDEX cache_entry_hnsw_384 ON routing_cacheentry "
            "USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE vector_dims(embedding) = 384"
        )
    for i, vector in enumerate(unit_rows(rng, 3)):
        CacheEntry.objects.create(
            tenant=small,
            served_model="m",
            key_hash=f"small-{i}",
            kind=CacheEntryKind.SEMANTIC,
            answer_encrypted="x",
            embedding=vector,
            prompt_encrypted=prompt,
            context_fingerprint="ctx",
            expires_at=expires_at,
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE routing_cacheentry")


def timed(lookup, queries) -> tuple[float, float]:
    times = []
    for query in queries:
        started = time.perf_counter()
        lookup(query)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_pgvector")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 10_000, 100_000])
    parser.add_argument("--lookups", type=int, default=300)
    args = parser.parse_args()

    migrated_django(args.database_url)
    from routing.cache.index import stored_matches
    from routing.models import CacheEntry
    from tenants.models import Tenant

    Tenant.objects.unscoped().filter(slug__startswith="bench-vector-").delete()
    tenants = [Tenant.objects.create(name=f"t{i}", slug=f"bench-vector-{i}") for i in range(TENANTS)]
    small = Tenant.objects.create(name="small", slug="bench-vector-small")
    rng = np.random.default_rng(17)
    queries = unit_rows(rng, args.lookups)

    def search(tenant):
        return lambda query: (
            stored_matches(
                tenant_id=tenant.pk,
                served_model="m",
                key_hash="",
                context_fingerprint="ctx",
                vector=query,
                threshold=-1,
            ).candidates
        )

    print(
        f"lookups={args.lookups} per row, dimensions={DIMENSIONS}, {TENANTS} tenants share the rows, "
        f"cpus={os.cpu_count()}"
    )
    print(
        f"{'entries':>8} {'fill s':>7}   {'large tenant p50/p95 ms':>24}   {'3-entry tenant p50/p95 ms':>26}"
        f"   {'numpy over large tenant p50 ms':>30}"
    )
    for size in args.sizes:
        started = time.perf_counter()
        fill(size, tenants, small, rng)
        fill_seconds = time.perf_counter() - started
        large = timed(search(tenants[0]), queries)
        few = timed(search(small), queries)
        rows = list(
            CacheEntry.objects.for_tenant(tenants[0])
            .filter(embedding__isnull=False)
            .values_list("embedding", flat=True)
        )
        matrix = np.array(rows, dtype=np.float32).reshape(-1, DIMENSIONS)
        in_memory = timed(lambda query, matrix=matrix: np.argsort(-(matrix @ query))[:5], queries)
        print(
            f"{size:>8} {fill_seconds:>7.1f}   {large[0]:>11.2f} / {large[1]:>10.2f}"
            f"   {few[0]:>12.2f} / {few[1]:>11.2f}   {in_memory[0]:>30.3f}"
        )
    Tenant.objects.unscoped().filter(slug__startswith="bench-vector-").delete()


if __name__ == "__main__":
    main()
