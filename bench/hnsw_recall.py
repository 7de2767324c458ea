"""How often the semantic lookup in Postgres (pgvector HNSW) finds a rare question's entry when its context is full of
templated prompts that differ only by a number ("Summarise support ticket N about a late refund"), at each
``hnsw.ef_search``.

Each build empties the cache table of a scratch database and stores, one row at a time as the gateway's writer does
(the HNSW index kept up per row), ``--templated`` templated prompts with the questions below inserted among them at
random after the first fifth, all of one tenant, model and context, embedded by the configured embedder. Then each
question is asked in other words through `stored_matches` (the gateway's query, iterative scans on) and counted as
found when its own entry is among the rows returned; "exact" counts the questions whose entry is among the 5
nearest of all the rows by exact cosine, which is as many as any index could find. What is not found is a miss,
never a wrong answer (docs/caching.md, "A rare prompt among templated ones"). A figure, not a test.

    .venv/bin/python bench/hnsw_recall.py --database-url postgres://postgres@127.0.0.1:5432/bench_pgvector
"""

import argparse
import random
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

# (stored, asked in other words): help-desk questions unlike the templated prompts and unlike one another.
QUESTIONS = [
    ("What is the refund policy for late orders?", "Explain the refund policy for late orders"),
    ("How do I reset my password?", "Steps to reset my password"),
    ("How can I export my invoices as CSV?", "Export invoices to CSV how"),
    ("What are your support hours?", "When is support available?"),
    ("How do I add a teammate to my workspace?", "Invite a colleague to my workspace"),
    ("Can I change my billing email address?", "How to update the billing email"),
    ("How many vacation days do new employees get?", "Vacation allowance for new hires"),
    ("What is the parental leave policy?", "Explain parental leave"),
    ("How do I rotate an API key?", "Rotating my API key"),
    ("Why was my card declined?", "My card got declined, why?"),
    ("Where can I download the mobile app?", "Download link for the mobile app"),
    ("How do I enable two-factor authentication?", "Turn on 2FA for my account"),
    ("What file formats can I upload?", "Which upload formats are supported?"),
    ("How do I cancel my subscription?", "Cancel my plan please"),
    ("Is there a student discount?", "Do you offer discounts for students?"),
    ("How do I merge two accounts?", "Combine two of my accounts"),
    ("What does error code E42 mean?", "Meaning of error E42"),
    ("How long does shipping to Canada take?", "Delivery time to Canada"),
    ("Can I get a copy of my contract?", "Send me my contract copy"),
    ("How do I report a security vulnerability?", "Where to report a security issue"),
]
MODEL = "m"
CONTEXT = "ctx"
NEAREST = 5


def embedded(texts: list[str]) -> np.ndarray:
    from routing.cache.embedders import configured_embedder

    embedder = configured_embedder()
    return np.vstack([embedder.embed(texts[start : start + 64]) for start in range(0, len(texts), 64)])


def fill(tenant, prompts: list[str], vectors: np.ndarray) -> None:
    """One row at a time, as the gateway's writer stores them, so the graph is the one it would build."""
    from django.db import connection
    from django.utils import timezone

    from routing.cache.sealed import seal_prompt
    from routing.models import CacheEntry, CacheEntryKind

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE routing_cacheentry")
    expires_at = timezone.now() + timedelta(hours=1)
    for number, (prompt, vector) in enumerate(zip(prompts, vectors, strict=True)):
        CacheEntry.objects.create(
            tenant=tenant,
            served_model=MODEL,
            key_hash=f"k{number}",
            kind=CacheEntryKind.SEMANTIC,
            answer_encrypted="x",
            embedding=vector,
            prompt_encrypted=seal_prompt(prompt),
            context_fingerprint=CONTEXT,
            expires_at=expires_at,
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE routing_cacheentry")
        # Without it (bench/vector_lookup.py drops and rebuilds it) the lookup would be exact and prove nothing.
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [f"cache_entry_hnsw_{vectors.shape[1]}"])
        if cursor.fetchone() is None:
            raise SystemExit(f"the HNSW index of {vectors.shape[1]} dimensions is missing: migrate the database anew")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_pgvector")
    parser.add_argument("--templated", type=int, default=10_000, help="templated prompts in the context")
    parser.add_argument("--builds", type=int, default=3, help="graphs built, each with the questions elsewhere")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[40, 100, 200])
    args = parser.parse_args()

    migrated_django(args.database_url)
    from django.db import connection

    from routing.cache.index import stored_matches
    from routing.cache.keys import normalize_prompt
    from tenants.models import Tenant

    Tenant.objects.unscoped().filter(slug="bench-hnsw-recall").delete()
    tenant = Tenant.objects.create(name="hnsw recall", slug="bench-hnsw-recall")
    stored = [normalize_prompt(question) for question, _ in QUESTIONS]
    asked = [normalize_prompt(rewording) for _, rewording in QUESTIONS]
    asked_vectors = embedded(asked)
    print(
        f"{args.templated} templated prompts and {len(QUESTIONS)} questions in one context; a question is found when "
        f"its entry is among the {NEAREST} rows the lookup returns"
    )
    print(f"{'build':>5} {'ef_search':>9} {'found':>7} {'exact':>7} {'lookup p50 ms':>14}")
    for build in range(args.builds):
        rng = random.Random(build)
        prompts = [
            normalize_prompt(f"Summarise support ticket {rng.randint(1000, 9999)}-{number} about a late refund")
            for number in range(args.templated)
        ]
        for question in stored:
            prompts.insert(rng.randint(len(prompts) // 5, len(prompts)), question)
        vectors = embedded(prompts)
        fill(tenant, prompts, vectors)
        # The best any index could do: the entries among the exact nearest rows.
        exact = sum(
            prompts.index(question) in np.argsort(-(vectors @ vector))[:NEAREST]
            for question, vector in zip(stored, asked_vectors, strict=True)
        )
        for ef_search in args.ef_search:
            with connection.cursor() as cursor:
                cursor.execute(f"SET hnsw.ef_search = {int(ef_search)}")
            found, times = 0, []
            for question, vector in zip(stored, asked_vectors, strict=True):
                started = time.perf_counter()
                matches = stored_matches(
                    tenant_id=tenant.pk,
                    served_model=MODEL,
                    key_hash="",
                    context_fingerprint=CONTEXT,
                    vector=vector,
                    threshold=-1,
                )
                times.append((time.perf_counter() - started) * 1000)
                found += question in [candidate.entry.text for candidate in matches.candidates]
            print(
                f"{build + 1:>5} {ef_search:>9} {found:>4}/{len(QUESTIONS)} {exact:>4}/{len(QUESTIONS)}"
                f" {statistics.median(times):>14.2f}",
                flush=True,
            )
    Tenant.objects.unscoped().filter(slug="bench-hnsw-recall").delete()


if __name__ == "__main__":
    main()
