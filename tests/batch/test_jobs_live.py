"""Async single jobs: 202 at once, run by the live worker, the answer kept and sent to a signed webhook."""

from datetime import timedelta

import httpx
import orjson
import pytest
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError

from billing.models import UsageRecord
from core.webhooks import webhook_secret_new
from llmops.gateway.batches.models import Job, JobStatus
from llmops.gateway.jobs.services import CALLBACK_URL_REFUSED, job_request_id, job_run
from llmops.gateway.jobs.tasks import WEBHOOK_RETRY_BASE_SECONDS
from tenants.services import api_key_revoke
from tests.batch.conftest import wait_for
from tests.loops import run as run_on_a_new_loop
from tests.webhooks import assert_verified_and_not_forgeable

pytestmark = pytest.mark.live


def report_job(receiver) -> dict:
    return {
        "model": "acme-small",
        "messages": [{"role": "user", "content": "Write the quarterly report"}],
        "callback_url": f"{receiver.url}/hooks/llmops",
    }


def test_job_runs_in_the_background_and_posts_a_signed_webhook(worker, gateway, acme, receiver):
    headers = {"Authorization": f"Bearer {acme.key}"}
    request = report_job(receiver)

    accepted = httpx.post(f"{gateway.url}/api/jobs", json=request, headers=headers)
    job_id = accepted.json()["id"]
    wait_for(lambda: receiver.app.received)
    finished = httpx.get(f"{gateway.url}/api/jobs/{job_id}", headers=headers).json()
    shown = httpx.get(f"{gateway.url}/api/jobs/webhook-secret", headers=headers).json()
    secret = shown["secret"]

    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    assert finished["status"] == "completed" and finished["status_code"] == 200
    assert finished["result"]["object"] == "chat.completion"
    record = wait_for(
        lambda: UsageRecord.objects.unscoped().filter(request_id=finished["request_id"]).first(), timeout=10
    )
    assert record.endpoint == "/api/jobs" and f"{record.cost_usd:f}" == finished["cost_usd"]
    hook = receiver.app.received[0]
    hook_headers, body = hook.headers, hook.body
    assert secret.startswith("whsec_") and shown["algorithm"] == "standard-webhooks-v1"
    assert assert_verified_and_not_forgeable(Webhook(secret), body, hook_headers)["id"] == job_id
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook_secret_new()).verify(body, hook_headers)
    assert hook_headers["webhook-id"] == job_id and orjson.loads(body)["id"] == job_id
    wait_for(
        lambda: httpx.get(f"{gateway.url}/api/jobs/{job_id}", headers=headers).json()["webhook"]["state"] == "delivered"
    )


def test_a_failing_webhook_is_retried_by_the_worker_after_a_backoff_then_failed(worker, gateway, acme, receiver):
    """The worker's retries wait their countdown (WORKER_ENV: 2 attempts in all), unlike eager mode's."""
    headers = {"Authorization": f"Bearer {acme.key}"}
    receiver.app.statuses.extend([500, 500])
    request = report_job(receiver)

    accepted = httpx.post(f"{gateway.url}/api/jobs", json=request, headers=headers)
    job_id = accepted.json()["id"]

    def given_up() -> dict | None:
        job = httpx.get(f"{gateway.url}/api/jobs/{job_id}", headers=headers).json()
        return job if job["webhook"]["state"] == "failed" else None

    finished = wait_for(given_up)

    assert accepted.status_code == 202
    assert finished["webhook"]["attempts"] == 2 and finished["status"] == "completed"
    first, second = receiver.app.received
    waited = int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"])
    # Whole seconds either side: a countdown of 5 s reads as at least 4.
    assert waited >= WEBHOOK_RETRY_BASE_SECONDS - 1


def test_job_refusals_and_another_tenants_job(live_broker, gateway, acme, globex):
    headers = {"Authorization": f"Bearer {acme.key}"}
    body = {"model": "acme-small", "messages": [{"role": "user", "content": "hi"}]}

    bad_url = httpx.post(
        f"{gateway.url}/api/jobs", json={**body, "callback_url": "file:///etc/passwd"}, headers=headers
    )
    bad_body = httpx.post(f"{gateway.url}/api/jobs", json={"model": "acme-small"}, headers=headers)
    no_key = httpx.post(f"{gateway.url}/api/jobs", json=body)
    job_id = httpx.post(f"{gateway.url}/api/jobs", json=body, headers=headers).json()["id"]
    foreign = httpx.get(f"{gateway.url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {globex.key}"})

    assert (bad_url.status_code, bad_url.json()["error"]["param"]) == (400, "callback_url")
    assert bad_url.json()["error"]["code"] == "invalid_value"
    assert (bad_body.status_code, bad_body.json()["error"]["param"]) == (400, "messages")
    assert no_key.status_code == 401
    assert foreign.status_code == 404


def test_job_refusals_use_the_v1_codes_naming_the_field(gateway, acme):
    """/api/jobs answers like /v1: invalid_type for the wrong JSON type, invalid_value for a value not taken."""
    body = {"model": "acme-small", "messages": [{"role": "user", "content": "hi"}]}
    long_url = "https://example.com/" + "a" * (3000 - len("https://example.com/"))
    refused_url = ("invalid_value", "callback_url", CALLBACK_URL_REFUSED)
    cases = [
        (
            {"callback_url": 5},
            (
                "invalid_type",
                "callback_url",
                "Invalid type for 'callback_url': expected a URL string, but got an integer instead.",
            ),
        ),
        (
            {"callback_url": long_url},
            (
                "invalid_value",
                "callback_url",
                "Invalid value for 'callback_url': a URL of 3000 characters. At most 2000 are allowed.",
            ),
        ),
        ({"callback_url": "ftp://example.com/hook"}, refused_url),
        ({"callback_url": "/hooks/llmops"}, refused_url),
        ({"callback_url": "http://169.254.169.254/latest/meta-data/"}, refused_url),
        ({"callback_url": "http://user:pass@example.com/hook"}, refused_url),
        ({"callback_url": "http://"}, refused_url),
        (
            {"stream": True},
            ("invalid_value", "stream", "A job cannot stream; poll GET /api/jobs/{id} or use callback_url."),
        ),
    ]

    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {acme.key}"}) as client:
        answers = [client.post("/api/jobs", json={**body, **extra}) for extra, _ in cases]

    assert [(answer.status_code, answer.json()["error"]) for answer in answers] == [
        (400, {"message": message, "type": "invalid_request_error", "param": param, "code": code})
        for _, (code, param, message) in cases
    ]
    assert not Job.objects.unscoped().exists()


def test_a_job_whose_key_is_revoked_before_it_runs_fails_with_openai_error(live_broker, gateway, acme):
    headers = {"Authorization": f"Bearer {acme.key}"}
    body = {"model": "acme-small", "messages": [{"role": "user", "content": "hi"}]}
    job_id = httpx.post(f"{gateway.url}/api/jobs", json=body, headers=headers).json()["id"]
    api_key_revoke(api_key=acme.api_key)

    run_on_a_new_loop(job_run(job_id=job_id))

    job = Job.objects.unscoped().get(pk=job_id)
    assert (job.status, job.status_code) == (JobStatus.FAILED, 401)
    assert job.result == {
        "error": {
            "message": f"The API key {acme.api_key.prefix}… has been revoked.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert not UsageRecord.objects.unscoped().filter(request_id=job_request_id(job_id)).exists()


def expire_key(acme) -> None:
    acme.api_key.expires_at = timezone.now() - timedelta(seconds=1)
    acme.api_key.save(update_fields=["expires_at"])


def disable_team(acme) -> None:
    acme.team.is_active = False
    acme.team.save(update_fields=["is_active"])


@pytest.mark.parametrize(("refuse", "reason"), [(expire_key, "expired at"), (disable_team, "disabled tenant or team")])
def test_a_job_whose_key_expired_or_team_was_disabled_before_it_runs_is_refused(
    refuse, reason, live_broker, gateway, acme
):
    headers = {"Authorization": f"Bearer {acme.key}"}
    body = {"model": "acme-small", "messages": [{"role": "user", "content": "hi"}]}
    job_id = httpx.post(f"{gateway.url}/api/jobs", json=body, headers=headers).json()["id"]
    refuse(acme)

    run_on_a_new_loop(job_run(job_id=job_id))

    job = Job.objects.unscoped().get(pk=job_id)
    assert (job.status, job.status_code, job.result["error"]["code"]) == (JobStatus.FAILED, 401, "invalid_api_key")
    assert reason in job.result["error"]["message"]
    assert not UsageRecord.objects.unscoped().filter(request_id=job_request_id(job_id)).exists()
