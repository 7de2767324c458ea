"""Shadow evaluation in production shape: a uvicorn gateway process hands sampled requests to a real Celery worker
(two prefork processes) through the Redis broker's `shadow` queue; the worker replays them on the mock upstream over
loopback HTTP and records its verdicts in Postgres (its own task count shows it did, not the gateway).

A small model that gets 20% of labels wrong is found out within the interval; one that is never wrong agrees on every
row; each reference call is a ledger row of kind evaluation at the catalog's price, which the product budget's
counter never counts; and a small evaluation budget holds across the two worker processes."""

import asyncio
import math
import time
from decimal import Decimal

import httpx
import pytest
from django.conf import settings
from django.db.models import Sum

from billing.budgets.services import budget_counter_check, budget_create
from billing.ledger.costs import usage_cost
from billing.models import EvaluationSpend, JudgeMethod, Lever, ShadowEvaluation, UsageKind, UsageRecord
from llmops.celery import app as celery_app
from llmops.gateway.shadow.tasks import shadow_evaluate_task
from llmops.mock_upstream import classification_answer
from routing.catalog import ModelPrices
from routing.services import routing_policy_create_default, tenant_model_access_set
from tests.batch.conftest import celery_worker_process
from tests.conftest import LARGE_PRICES, make_tenant_setup
from tests.factories import ModelFactory
from tests.servers import committed_database_url
from tests.shadow.conftest import evaluation_on

LABELS = ["billing", "technical", "account", "other"]
CONCURRENCY = 16


def ticket(index: int) -> list[dict]:
    return [
        {"role": "system", "content": f"Classify the support ticket.\nLabels: {', '.join(LABELS)}"},
        {"role": "user", "content": f"Ticket {index}: order {index * 101} for customer {index * 37} has a problem"},
    ]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return centre - half, centre + half


def tenant_routing_classification_to(small_upstream: str, slug: str, upstream_url: str):
    """A tenant whose policy sends classification to a small model answering as ``small_upstream``, `auto`'s large
    model being the mock's correct one."""
    setup = make_tenant_setup(upstream_url, slug=slug)
    small = ModelFactory(
        name=f"{slug}-{small_upstream}",
        provider=setup.small.provider,
        upstream_name=small_upstream,
        **setup.small.price_in_force().prices(),
    )
    tenant_model_access_set(tenant=setup.tenant, allowed_models=[small, setup.large], default_model=small)
    routing_policy_create_default(tenant=setup.tenant, small_model=small, large_model=setup.large)
    setup.small = small
    return setup


async def classify(gateway_url: str, setup, indexes: range) -> dict[str, int]:
    """Request id → ticket index, CONCURRENCY requests at a time."""
    limit = asyncio.Semaphore(CONCURRENCY)
    headers = {"authorization": f"Bearer {setup.key}"}
    async with httpx.AsyncClient(base_url=gateway_url, headers=headers, timeout=30) as client:

        async def one(index: int) -> tuple[str, int]:
            body = {"model": "auto", "messages": ticket(index), "max_tokens": 5}
            body["metadata"] = {"task_type": "classification"}
            async with limit:
                response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.headers["x-llmops-model"] == setup.small.name
            return response.headers["x-llmops-request-id"], index

        return dict(await asyncio.gather(*(one(index) for index in indexes)))


def wait_until(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout} s: {what}")
        time.sleep(0.2)


@pytest.fixture
def process_env(process_env):
    """Every process of the test (gateway, worker) on the test Redis as the broker, none running tasks eagerly: the
    gateway only hands samples over, whatever the environment the tests run in says."""
    return {**process_env, "CELERY_BROKER_URL": settings.REDIS_URL, "CELERY_TASK_ALWAYS_EAGER": "false"}


@pytest.fixture
def worker(process_env, gateway):
    env = {**process_env, "CELERY_BROKER_URL": settings.REDIS_URL, "CELERY_TASK_ALWAYS_EAGER": "false"}
    env["DATABASE_URL"] = committed_database_url()
    running = celery_worker_process(env, concurrency=2).start()
    yield running
    running.kill()


def tasks_the_worker_ran() -> dict[str, int]:
    """The worker's own count of the tasks it received, by name (`celery inspect stats`, over the broker)."""
    with celery_app.connection_for_write(settings.REDIS_URL) as connection:
        replies = celery_app.control.inspect(connection=connection, timeout=10, limit=1).stats() or {}
    (stats,) = replies.values()
    return stats["total"]


@pytest.fixture
def gateway_url(spawn, gateway_port, worker) -> str:
    start_gateway, _ = spawn
    start_gateway(gateway_port).start()
    return f"http://127.0.0.1:{gateway_port}"


@pytest.mark.live
def test_shadow_evaluation_finds_the_wrong_small_model_and_clears_the_right_one(
    gateway_url, mock_upstream, ledger_drainer
):
    wrong = tenant_routing_classification_to("mock-small-wrong-20", "acme", mock_upstream.url)
    right = tenant_routing_classification_to("mock-small", "globex", mock_upstream.url)
    tight = tenant_routing_classification_to("mock-small", "initech", mock_upstream.url)
    for setup in (wrong, right):
        evaluation_on(setup.tenant, routing=1)
    evaluation_on(tight.tenant, budget="0.0005", routing=1)
    product_budget = budget_create(tenant=wrong.tenant, limit_usd=Decimal(100))

    async def traffic():
        return await asyncio.gather(
            classify(gateway_url, wrong, range(120)),
            classify(gateway_url, right, range(40)),
            classify(gateway_url, tight, range(20)),
        )

    sent_wrong, sent_right, sent_tight = asyncio.run(traffic())

    def tight_done() -> bool:
        spend = EvaluationSpend.objects.for_tenant(tight.tenant).first()
        evaluated = ShadowEvaluation.objects.for_tenant(tight.tenant).count()
        return spend is not None and spend.refused + evaluated == len(sent_tight)

    wait_until(
        lambda: (
            ShadowEvaluation.objects.for_tenant(wrong.tenant).count() == len(sent_wrong)
            and ShadowEvaluation.objects.for_tenant(right.tenant).count() == len(sent_right)
            and tight_done()
        ),
        timeout=60,
        what="every sampled request evaluated",
    )
    ledger_drainer.wait_drained()

    # The worker, not the gateway, evaluated every sample: it received one task per sampled request.
    sampled = len(sent_wrong) + len(sent_right) + len(sent_tight)
    assert tasks_the_worker_ran().get(shadow_evaluate_task.name) == sampled

    # The 20%-wrong model: every verdict is the mock's, and the interval of agreement holds its 80%.
    found = {e.request_id: e for e in ShadowEvaluation.objects.for_tenant(wrong.tenant)}
    assert set(found) == set(sent_wrong)
    for request_id, index in sent_wrong.items():
        evaluation = found[request_id]
        expected = classification_answer(ticket(index), LABELS, "mock-small-wrong-20") == classification_answer(
            ticket(index), LABELS, "mock-large"
        )
        assert (evaluation.lever, evaluation.method, evaluation.agrees) == (Lever.ROUTING, JudgeMethod.EXACT, expected)
        assert (evaluation.served_model, evaluation.reference_model) == (wrong.small.name, wrong.large.name)
        assert evaluation.rule == "short-classification-and-summaries"
    agreeing = sum(e.agrees for e in found.values())
    low, high = wilson_interval(agreeing, len(found))
    assert low <= 0.80 <= high, (agreeing, low, high)
    assert agreeing < len(found)

    # The never-wrong model agrees every time.
    assert all(e.agrees for e in ShadowEvaluation.objects.for_tenant(right.tenant))

    # One evaluation ledger row per reference call, parented to its request, at the large model's Decimal price.
    large = ModelPrices(*LARGE_PRICES)
    rows = UsageRecord.objects.for_tenant(wrong.tenant).filter(kind=UsageKind.EVALUATION)
    assert sorted(rows.values_list("parent_request_id", flat=True)) == sorted(sent_wrong)
    for row in rows:
        cost = usage_cost(
            prices=large, prompt_tokens=row.prompt_tokens, cached_tokens=0, completion_tokens=row.completion_tokens
        )
        assert (row.served_model, row.cost_usd, row.price_version_id) == (
            wrong.large.name,
            cost,
            wrong.large.price_in_force().pk,
        )
        assert row.cost_usd == found[row.parent_request_id].cost_usd
    evaluation_cost = rows.aggregate(total=Sum("cost_usd"))["total"]
    spend = EvaluationSpend.objects.for_tenant(wrong.tenant).get()
    assert (spend.spent_usd, spend.reserved_usd, spend.refused, spend.unjudged) == (evaluation_cost, 0, 0, 0)

    # The product budget's counter holds the requests' cost, none of their evaluations'.
    product_cost = (
        UsageRecord.objects.for_tenant(wrong.tenant)
        .filter(kind=UsageKind.REQUEST)
        .aggregate(total=Sum("cost_usd"))["total"]
    )
    check = budget_counter_check(budget=product_budget, now=rows.first().created_at)
    assert check.counted_usd == check.ledger_usd == product_cost
    assert evaluation_cost > 0

    # Two worker processes evaluating one tenant never spent more than its evaluation budget.
    tight_spend = EvaluationSpend.objects.for_tenant(tight.tenant).get()
    tight_rows = UsageRecord.objects.for_tenant(tight.tenant).filter(kind=UsageKind.EVALUATION)
    assert tight_spend.spent_usd == tight_rows.aggregate(total=Sum("cost_usd"))["total"] <= Decimal("0.0005")
    assert tight_spend.reserved_usd == 0 and tight_spend.refused > 0
    assert ShadowEvaluation.objects.for_tenant(tight.tenant).count() == tight_rows.count() > 0
