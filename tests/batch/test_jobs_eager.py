"""Async jobs in eager mode, the embedded demo's (no broker): POST /api/jobs runs the job and its webhook in the
request, and a webhook that fails never turns the 202 into an error."""

import httpx
import pytest

from billing.models import UsageRecord
from llmops.gateway.batches.models import Job, WebhookState
from llmops.gateway.jobs.services import WEBHOOK_UNREACHABLE, job_request_id
from tests.servers import free_port

pytestmark = pytest.mark.live
MAX_ATTEMPTS = 3


@pytest.fixture
def eager(settings, eager_celery):
    settings.LLMOPS_JOBS_WEBHOOK_MAX_ATTEMPTS = MAX_ATTEMPTS
    return eager_celery


def post_job(gateway, acme, callback_url: str) -> tuple[httpx.Response, dict]:
    headers = {"Authorization": f"Bearer {acme.key}"}
    body = {"model": "acme-small", "messages": [{"role": "user", "content": "repro"}], "callback_url": callback_url}
    accepted = httpx.post(f"{gateway.url}/api/jobs", json=body, headers=headers, timeout=60)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    return accepted, httpx.get(f"{gateway.url}/api/jobs/{job_id}", headers=headers).json()


def assert_ran_and_charged_once(job: dict) -> None:
    assert (job["status"], job["status_code"]) == ("completed", 200)
    [record] = UsageRecord.objects.unscoped().filter(request_id=job_request_id(job["id"]))
    assert record.endpoint == "/api/jobs" and f"{record.cost_usd:f}" == job["cost_usd"]
    assert Job.objects.unscoped().count() == 1


@pytest.mark.parametrize("failure", ["answers 500", "closed port"])
def test_a_failing_callback_is_retried_to_failed_and_the_job_answers_202(eager, gateway, acme, receiver, failure):
    if failure == "answers 500":
        receiver.app.statuses.extend([500] * MAX_ATTEMPTS)
        callback_url = f"{receiver.url}/hook"
    else:
        callback_url = f"http://127.0.0.1:{free_port()}/hook"

    accepted, job = post_job(gateway, acme, callback_url)

    assert accepted.json()["id"].startswith("job_") and accepted.json()["id"] == job["id"]
    assert_ran_and_charged_once(job)
    assert (job["webhook"]["state"], job["webhook"]["attempts"]) == (WebhookState.FAILED, MAX_ATTEMPTS)
    if failure == "answers 500":
        assert [hook.headers["webhook-id"] for hook in receiver.app.received] == [job["id"]] * MAX_ATTEMPTS
        assert Job.objects.unscoped().get().webhook_last_error == "HTTP 500"
    else:
        assert Job.objects.unscoped().get().webhook_last_error == WEBHOOK_UNREACHABLE


def test_a_callback_that_fails_once_is_delivered_on_the_next_attempt(eager, gateway, acme, receiver):
    receiver.app.statuses.append(500)

    _, job = post_job(gateway, acme, f"{receiver.url}/hook")

    assert_ran_and_charged_once(job)
    assert (job["webhook"]["state"], job["webhook"]["attempts"]) == (WebhookState.DELIVERED, 2)
    assert job["webhook"]["delivered_at"] is not None and len(receiver.app.received) == 2
