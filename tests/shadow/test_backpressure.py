"""What keeps shadow evaluation from growing without bound or delaying other work: its own queue with an expiry, a
size cap per sample, a month whose budget is spent sampled no more, and drops counted and logged once in a while."""

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
import redis
from django.utils import timezone
from prometheus_client import REGISTRY

from billing.models import EvaluationSettings, EvaluationSpend, Lever
from llmops.gateway.call import GatewayCall
from llmops.gateway.shadow import sampling
from llmops.gateway.shadow.rates import EvaluationRates
from llmops.gateway.shadow.samples import ShadowSample
from llmops.gateway.shadow.tasks import SHADOW_QUEUE, shadow_evaluate_task
from tests.batch.conftest import live_broker  # noqa: F401 (a fixture)
from tests.shadow.conftest import CLASSIFY, chat, evaluation_on, evaluations, ticket
from tests.shadow.test_sampling import LARGE, PRINCIPAL, SMALL, USAGE


def skipped_count(reason: str) -> float:
    return REGISTRY.get_sample_value("llmops_shadow_samples_skipped_total", {"reason": reason}) or 0.0


def sample(*, text: str = "Charged twice") -> ShadowSample:
    return ShadowSample(
        request_id="req_queued",
        tenant_id=1,
        team_id=1,
        api_key_id=1,
        served_model="small",
        levers={"routing": "large"},
        body={"model": "mock-small", "messages": ticket(text)},
        answer="billing",
    )


@pytest.fixture
def broker(live_broker, settings):  # noqa: F811 (the fixture imported above)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(SHADOW_QUEUE, "celery")
    yield client
    client.delete(SHADOW_QUEUE, "celery")


def test_a_sample_goes_to_the_shadow_queue_and_expires_there(broker, settings):
    """Not the default queue that budget alerts and batches share; a worker drops it once it expired."""
    settings.LLMOPS_SHADOW_TASK_EXPIRES_SECONDS = 90
    sent_at = datetime.now(UTC)

    sampling.shadow_sample_enqueue(sample())
    sampling.shadow_samples_wait()

    assert broker.llen("celery") == 0
    (raw,) = broker.lrange(SHADOW_QUEUE, 0, -1)
    message = orjson.loads(raw)
    assert message["headers"]["task"] == shadow_evaluate_task.name
    expires = datetime.fromisoformat(message["headers"]["expires"])
    assert sent_at + timedelta(seconds=89) <= expires <= datetime.now(UTC) + timedelta(seconds=90)


def test_a_sample_larger_than_the_cap_once_sealed_is_not_handed_over(broker, settings):
    settings.LLMOPS_SHADOW_SAMPLE_MAX_BYTES = 2000
    dropped = skipped_count("too_large")

    sampling.shadow_sample_enqueue(sample(text="word " * 300))
    sampling.shadow_sample_enqueue(sample(text="short"))
    sampling.shadow_samples_wait()

    assert broker.llen(SHADOW_QUEUE) == 1
    assert skipped_count("too_large") == dropped + 1


def test_a_sample_that_finds_the_process_s_backlog_full_is_dropped(broker, monkeypatch):
    monkeypatch.setattr(sampling, "MAX_PENDING", 0)
    dropped = skipped_count("backlog")

    sampling.shadow_sample_enqueue(sample())
    sampling.shadow_samples_wait()

    assert broker.llen(SHADOW_QUEUE) == 0
    assert skipped_count("backlog") == dropped + 1


def test_a_request_known_too_large_is_not_sampled(gateway, routed, evaluated, tasks_run, settings):
    """Its declared size and its answer pass the cap: dropped before it is sealed or held."""
    settings.LLMOPS_SHADOW_SAMPLE_MAX_BYTES = 4000
    evaluation_on(routed.tenant)
    dropped = skipped_count("too_large")

    chat(gateway, routed, {"model": "auto", "messages": ticket("Card declined " * 400), **CLASSIFY})
    evaluated()
    assert shadow_evaluate_task.name not in tasks_run
    chat(gateway, routed, {"model": "auto", "messages": ticket("Card declined"), **CLASSIFY})
    evaluated()

    assert tasks_run.count(shadow_evaluate_task.name) == 1
    assert skipped_count("too_large") == dropped + 1


def test_drops_are_logged_at_most_once_a_minute_with_the_counts_since_the_last_log(caplog):
    now = [1000.0]
    skipped = sampling.SkippedSamples(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger=sampling.logger.name)

    skipped.note(sampling.TOO_LARGE)
    for _ in range(5):
        now[0] += 10
        skipped.note(sampling.BACKLOG)
    now[0] += 11
    skipped.note(sampling.TOO_LARGE)

    logged = [record.getMessage() for record in caplog.records if record.name == sampling.logger.name]
    assert logged == [
        "shadow evaluation: samples dropped since the last report: {'too_large': 1}",
        "shadow evaluation: samples dropped since the last report: {'backlog': 5, 'too_large': 1}",
    ]


@pytest.mark.parametrize(("until", "drawn"), [(timedelta(days=3), {}), (timedelta(seconds=-1), {"routing": "large"})])
def test_a_tenant_paused_for_a_spent_month_draws_nothing_until_the_pause_ends(until, drawn):
    rates = EvaluationRates(1.0, 1.0, 1.0, 1.0, paused_until=timezone.now() + until)
    call = GatewayCall(principal=PRINCIPAL, served=SMALL, routed=SMALL, routing_baseline=LARGE, evaluation=rates)
    call.settled_usage = USAGE

    assert sampling.shadow_draw(call) == drawn


def test_a_tenant_whose_month_is_spent_is_sampled_no_more(gateway, routed, evaluated, tasks_run):
    """The worker marks the settings; the warm gateway reads the mark from its snapshot and stops handing samples
    over, so no refused sample waits in the broker."""
    settings = evaluation_on(routed.tenant, routing=1)
    body = {"model": "auto", "messages": ticket("Charged twice"), **CLASSIFY}
    chat(gateway, routed, body)
    evaluated()
    month = EvaluationSpend.objects.for_tenant(routed.tenant).get()
    # Room for half of one more evaluation like the first.
    settings.monthly_budget_usd = month.spent_usd * Decimal("1.5")
    settings.save()

    chat(gateway, routed, body)
    evaluated()
    chat(gateway, routed, body)
    evaluated()

    assert tasks_run.count(shadow_evaluate_task.name) == 2
    month.refresh_from_db()
    assert month.refused == 1 and len(evaluations(lever=Lever.ROUTING)) == 1
    next_month = (month.month.replace(day=28) + timedelta(days=4)).replace(day=1)
    exhausted_until = EvaluationSettings.objects.for_tenant(routed.tenant).get().exhausted_until
    assert exhausted_until == datetime(next_month.year, next_month.month, 1, tzinfo=UTC)
