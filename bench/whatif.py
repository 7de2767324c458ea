"""What-if replay time and memory on a ledger of one million rows of one tenant. A figure, not a test.

Creates a dedicated Postgres database (dropped and recreated each run), loads the ledger with COPY (requests of the
last 30 days with varied prompt counts, task types, tiers and difficulty scores, and a payload log for --logged of
them), then times `whatif_replay` over 30 days under the default policy and a draft that moves summaries to the
large model, and prints the process's peak memory before and after.

    .venv/bin/python bench/whatif.py --rows 1000000 --logged 5000
    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmops_whatif_bench (the default)
"""

import argparse
import copy
import os
import random
import resource
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "llmops_whatif_bench"
TASK_TYPES = ("classification", "summarization", "chat", "extraction", "")
TIERS = ("free", "pro", "enterprise", "")


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment

    settings.DATABASES["default"]["TEST"].update({"NAME": BENCH_DB})
    setup_test_environment()
    connection.creation.create_test_db(verbosity=0, autoclobber=True)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(*, tenant, key, rows: int, logged: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from billing.models import UsageRecord

    randomness = random.Random(18)
    now = timezone.now()
    fields = [field for field in UsageRecord._meta.concrete_fields if field.name != "id"]
    defaults = {field.attname: field.get_default() for field in fields}
    columns = [field.column for field in fields]
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY billing_usagerecord ({', '.join(columns)}) FROM STDIN") as records,
    ):
        for index in range(rows):
            tokens = int(randomness.lognormvariate(6.0, 0.9)) + 1
            values = {
                **defaults,
                "request_id": f"bench-{index}",
                "tenant_id": tenant.pk,
                "team_id": key.team_id,
                "api_key_id": key.pk,
                "requested_model": "auto",
                "served_model": "bench-small",
                "route": "otherwise-by-difficulty+score",
                "prompt_tokens": tokens,
                "prompt_tokens_before_compression": tokens,
                "cached_tokens": tokens // 3 if index % 4 == 0 else 0,
                "completion_tokens": int(randomness.lognormvariate(5.0, 0.6)),
                "cost_usd": Decimal("0.0001"),
                "task_type": randomness.choice(TASK_TYPES),
                "user_tier": randomness.choice(TIERS),
                "has_tools": index % 10 == 0,
                "has_images": False,
                "difficulty_score": randomness.randrange(101),
                "http_status": 200,
                "created_at": now - timedelta(seconds=randomness.randrange(29 * 86400)),
            }
            records.write_row([values[field.attname] for field in fields])
    body = {"model": "auto", "messages": [{"role": "user", "content": "First def f(x): then prove it step by step"}]}
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy("COPY tenants_payloadlog (tenant_id, request_id, request, created_at) FROM STDIN") as logs,
    ):
        for index in range(logged):
            logs.write_row([tenant.pk, f"bench-{index * (rows // max(logged, 1))}", orjson.dumps(body).decode(), now])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE billing_usagerecord")
        cursor.execute("ANALYZE tenants_payloadlog")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--logged", type=int, default=5000)
    arguments = parser.parse_args()
    setup_django(os.environ.get("BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"))

    from billing.finance.whatif import whatif_replay
    from routing.services import routing_policy_create_default, tenant_model_access_set
    from tenants.services import api_key_create, tenant_create
    from tests.factories import ModelFactory

    tenant = tenant_create(slug="bench", name="Bench", team_slugs=["support"])
    small = ModelFactory(name="bench-small")
    large = ModelFactory(name="bench-large", input_price_per_million=Decimal("2.5"), output_price_per_million=10)
    tenant_model_access_set(tenant=tenant, allowed_models=[small, large], default_model=small)
    policy = routing_policy_create_default(tenant=tenant, small_model=small, large_model=large)
    key, _ = api_key_create(team=tenant.teams.get())
    started = time.perf_counter()
    load(tenant=tenant, key=key, rows=arguments.rows, logged=arguments.logged)
    loaded = time.perf_counter() - started
    print(f"loaded {arguments.rows:,} ledger rows, {arguments.logged:,} payload logs in {loaded:.1f} s")

    draft = copy.deepcopy(policy.live_version.document)
    short = next(rule for rule in draft["rules"] if rule["name"] == "short-classification-and-summaries")
    short["match"]["task_types"] = ["classification"]
    draft["rules"].append(
        {
            "priority": 12,
            "name": "summaries-on-large",
            "match": {"requested_models": ["auto"], "task_types": ["summarization"]},
            "outcome": {"target_model": "bench-large"},
        }
    )
    before = peak_mb()
    for run in (1, 2):
        started = time.perf_counter()
        report = whatif_replay(tenant=tenant, days=30, draft=draft)
        elapsed = time.perf_counter() - started
        print(
            f"run {run}: {report.replayed:,} requests ({report.from_payloads:,} from payload logs) in {elapsed:.2f} s; "
            f"difference {report.total.difference_usd:.4f} USD, {report.undecided_requests:,} undecided"
        )
    print(f"peak memory: {before:.0f} MB before the replays, {peak_mb():.0f} MB after")


if __name__ == "__main__":
    main()
