"""Async jobs whose run goes wrong: an answer the database cannot keep, a fault once the run started, a worker killed
during the upstream call, a task delivered again. Each job ends once, with its cost in the ledger and the budget
counters and one webhook queued."""

import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import orjson
import pytest
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone
from redis import Redis

from billing.budgets.counters import BudgetHold
from billing.budgets.index import BudgetEntry
from billing.budgets.reservations import Reservation
from billing.budgets.services import budget_create
from billing.models import UsageKind, UsageRecord
from llmops.gateway.batches.models import Job, JobStatus, WebhookState
from llmops.gateway.jobs import services as job_services
from llmops.gateway.jobs.services import job_request_id, job_run
from llmops.gateway.jobs.tasks import job_run_task, job_webhook_task
from llmops.mock_upstream import MockUpstream
from tests.batch.conftest import wait_for
from tests.conftest import committed_process_env, make_tenant_setup
from tests.gateway.test_failed_attempts_live import assert_counted
from tests.loops import run as run_on_a_new_loop
from tests.servers import ServiceProcess, serving

pytestmark = pytest.mark.live

LIMIT = Decimal("100")
# The mock upstream's answer to a call the worker is killed during: long enough to kill it first.
SLOW_ANSWER_MS = 2000


class AnsweringNul:
    """An OpenAI-compatible upstream whose answer holds U+0000, which a model can write and jsonb cannot hold."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.calls += 1
        message = {"role": "assistant", "content": "a\u0000b"}
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "mock-small",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})


class CountingChats:
    """The mock upstream, counting the chat completions it is sent."""

    def __init__(self, app):
        self.app, self.chat_calls = app, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.chat_calls += 1
        await self.app(scope, receive, send)


@pytest.fixture
def nul_upstream():
    yield from serving(AnsweringNul())


@pytest.fixture
def slow_answering_upstream():
    yield from serving(CountingChats(MockUpstream(latency_ms=SLOW_ANSWER_MS)))


def job_of(setup, *, callback_url: str = "") -> Job:
    return Job.objects.create(
        tenant=setup.tenant,
        team=setup.team,
        api_key=setup.api_key,
        body={"model": setup.small.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
        callback_url=callback_url,
        webhook_state=WebhookState.PENDING if callback_url else WebhookState.NONE,
    )


def test_an_answer_holding_nul_fails_the_job_with_its_cost_charged_and_one_webhook(
    eager_celery, gateway, nul_upstream, receiver, ledger_drainer
):
    """jsonb cannot hold NUL: the job ends failed, saying why, and its ledger row charges what the upstream billed."""
    setup = make_tenant_setup(nul_upstream.url, slug="nulco")
    budget = budget_create(tenant=setup.tenant, limit_usd=LIMIT, period="day")
    job = job_of(setup, callback_url=f"{receiver.url}/hook")

    job_run_task.delay(job.id)
    job_run_task.delay(job.id)  # the task delivered again

    ledger_drainer.wait_drained()
    job.refresh_from_db()
    [record] = UsageRecord.objects.unscoped().filter(tenant=setup.tenant)
    assert (job.status, job.status_code, job.webhook_state) == (JobStatus.FAILED, 502, WebhookState.DELIVERED)
    error = job.result["error"]
    assert (error["type"], error["code"], error["param"]) == ("api_error", "upstream_answer_unstorable", None)
    assert "'choices[0].message.content' holds the NUL character" in error["message"]
    assert (record.request_id, record.prompt_tokens, record.completion_tokens) == (job.request_id, 10, 3)
    assert record.cost_usd == job.cost_usd > 0
    assert_counted(budget, record.cost_usd)
    assert nul_upstream.app.calls == 1
    [hook] = receiver.app.received
    assert orjson.loads(hook.body)["status"] == "failed"


def test_a_fault_after_the_run_started_fails_the_job_keeping_its_ledger_row_and_sends_its_webhook(
    eager_celery, gateway, acme, receiver, ledger_drainer, monkeypatch
):
    recorded = job_services._job_finish
    faults = [OperationalError("server closed the connection unexpectedly")]

    def recording_failing_once(**outcome):
        if faults:
            raise faults.pop()
        return recorded(**outcome)

    monkeypatch.setattr(job_services, "_job_finish", recording_failing_once)
    job = job_of(acme, callback_url=f"{receiver.url}/hook")

    job_run_task.delay(job.id)

    ledger_drainer.wait_drained()
    job.refresh_from_db()
    assert (job.status, job.status_code) == (JobStatus.FAILED, 500)
    assert job.result == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "api_error",
            "param": None,
            "code": "internal_error",
        }
    }
    [record] = UsageRecord.objects.unscoped().filter(tenant=acme.tenant)
    assert record.request_id == job.request_id == job_request_id(job.id) and record.cost_usd == job.cost_usd > 0
    [hook] = receiver.app.received
    assert orjson.loads(hook.body)["status"] == "failed" and job.webhook_state == WebhookState.DELIVERED


def test_a_worker_killed_during_the_upstream_call_leaves_nothing_reserved_and_its_call_charged(
    gateway, slow_answering_upstream, ledger_drainer
):
    """The task is delivered again (acks_late): the next run releases the dead run's reservation and charges its call
    its prompt, as a failed attempt, before it calls the upstream again."""
    setup = make_tenant_setup(slow_answering_upstream.url, slug="deadco")
    budget = budget_create(tenant=setup.tenant, limit_usd=LIMIT, period="month")
    job = job_of(setup)
    script = (
        "import django; django.setup()\n"
        "from llmops.gateway.jobs.services import job_run\nfrom tests.loops import run\n"
        f"run(job_run(job_id={job.id!r}))\n"
    )
    worker = ServiceProcess([sys.executable, "-c", script], committed_process_env()).start()
    try:
        noted = Job.objects.unscoped().filter(pk=job.id, call_in_flight__isnull=False)
        wait_for(lambda: slow_answering_upstream.app.chat_calls == 1 and noted.exists())
    finally:
        worker.kill()

    run_on_a_new_loop(job_run(job_id=job.id))

    ledger_drainer.wait_drained()
    job.refresh_from_db()
    own = UsageRecord.objects.unscoped().get(request_id=job.request_id)
    [lost] = UsageRecord.objects.unscoped().filter(tenant=setup.tenant, kind=UsageKind.FAILED_ATTEMPT)
    assert (job.status, slow_answering_upstream.app.chat_calls) == (JobStatus.COMPLETED, 2)
    assert (lost.parent_request_id, lost.served_model) == (job.request_id, setup.small.name)
    assert (lost.http_status, lost.error_code) == (500, "worker_lost")
    assert (lost.prompt_tokens, lost.completion_tokens, lost.usage_estimated) == (own.prompt_tokens, 0, True)
    assert lost.cost_usd > 0 and own.cost_usd == job.cost_usd
    assert_counted(budget, own.cost_usd + lost.cost_usd)
    assert UsageRecord.objects.unscoped().filter(tenant=setup.tenant).count() == 2


def queued_tasks() -> list[str]:
    broker = Redis.from_url(settings.REDIS_URL)
    return [orjson.loads(message)["headers"]["task"] for message in broker.lrange("celery", 0, -1)]


def test_a_finished_job_delivered_again_queues_no_second_webhook(live_broker, gateway, acme, receiver):
    """A second webhook task would be a second retry chain, past LLMOPS_JOBS_WEBHOOK_MAX_ATTEMPTS in all."""
    job = job_of(acme, callback_url=f"{receiver.url}/hook")

    job_run_task.apply(args=[job.id])
    job_services.job_webhook_attempt(job_id=job.id)  # the chain it queued made its first attempt
    job_run_task.apply(args=[job.id])  # delivered again after the first finished the job

    assert queued_tasks() == [job_webhook_task.name]
    assert Job.objects.unscoped().get(pk=job.id).status == JobStatus.COMPLETED


def test_a_finished_job_whose_worker_died_before_queuing_its_webhook_queues_it_when_delivered_again(
    live_broker, gateway, acme, receiver
):
    job = job_of(acme, callback_url=f"{receiver.url}/hook")
    run_on_a_new_loop(job_run(job_id=job.id))  # finished and recorded; its worker died before queuing the webhook

    job_run_task.apply(args=[job.id])

    assert queued_tasks() == [job_webhook_task.name]


def test_a_noted_hold_is_rebuilt_in_the_period_admission_held_it_in(monkeypatch):
    """Admitted in the last instant of a day, the chain started in the next: the next run must release the day the
    hold is in (on the database backend, another day's release would take other requests' reservations)."""
    admitted = datetime(2026, 12, 4, 23, 59, 59, 900_000, tzinfo=UTC)
    entry = BudgetEntry(
        budget_id=7, tenant_id=1, scope="key", team_id=None, key_id=3, model_name="", period="day",
        limit_usd=Decimal("1"), thresholds=(80, 100), action="block", zone=ZoneInfo("UTC"), version=1,
    )  # fmt: skip
    hold = BudgetHold.of(entry, now=admitted)
    call = SimpleNamespace(
        reservation=Reservation("req_1", 100, (hold,), "database", Decimal("1"), held_as="req_1:t"),
        served=SimpleNamespace(name="acme-small"),
        prompt_tokens_after_compression=12,
        customer="",
        created_at=admitted,
    )
    notes = []
    monkeypatch.setattr(job_services, "_job_call_note", lambda *, job_id, note: notes.append(note))

    monkeypatch.setattr(timezone, "now", lambda: admitted + timedelta(seconds=1))

    run_on_a_new_loop(job_services.JobCallNote("job_1").started(call))

    [note] = notes
    rebuilt = BudgetHold.of(entry, now=datetime.fromisoformat(note["hold"]["reserved_at"]))
    assert rebuilt.window.key == hold.window.key == "2026-12-04"
