"""Async single jobs: one chat completion run in the background, its answer kept and sent to a signed webhook.

The webhook is signed as Standard Webhooks (core.webhooks) under the tenant's webhook secret
(``GET /api/jobs/webhook-secret``); its ``webhook-id`` is the job's id.
"""

import hashlib

import httpx
import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing.ledger.events import UsageEvent
from billing.ledger.services import usage_record_create
from core.crypto import decrypt_secret, encrypt_secret
from core.db import database_sync_to_async
from core.outbound import OutboundRefused, outbound_post, outbound_url_errors
from core.webhooks import webhook_headers, webhook_secret_new
from llmops.gateway.batches.models import Job, JobStatus, JobWebhookSecret, WebhookState
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.completion import chat_completion_run
from llmops.gateway.chat.validation import _type_error, _value_error, validate_chat_request, validate_storable
from llmops.gateway.errors import GatewayError, as_gateway_error, error_body, invalid_request
from llmops.gateway.snapshot import config_snapshot
from tenants.authentication import KeyPrincipal, key_refusal

JOBS_ENDPOINT = "/api/jobs"

CALLBACK_URL_MAX_LENGTH = Job._meta.get_field("callback_url").max_length

WEBHOOK_UNREACHABLE = "The callback URL could not be reached."
CALLBACK_URL_REFUSED = "callback_url is not allowed: it must be an http(s) URL of a public host."


class WebhookDeliveryError(Exception):
    pass


def _callback_url_check(url) -> str:
    """The provider and webhook SSRF check (core/outbound.py); the URL is checked again when the webhook is sent."""
    if url in (None, ""):
        return ""
    if not isinstance(url, str):
        raise _type_error("callback_url", "a URL string", url)
    if len(url) > CALLBACK_URL_MAX_LENGTH:
        raise _value_error(
            "callback_url", f"a URL of {len(url)} characters. At most {CALLBACK_URL_MAX_LENGTH} are allowed."
        )
    if outbound_url_errors(url):
        # One message whatever the reason, as for a delivery: which names resolve to internal addresses stays unsaid.
        raise invalid_request(CALLBACK_URL_REFUSED, param="callback_url", code="invalid_value")
    return url


def job_create(*, principal: KeyPrincipal, body) -> Job:
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    validate_storable(body)
    request = {name: value for name, value in body.items() if name != "callback_url"}
    validate_chat_request(request)
    if request.get("stream"):
        raise invalid_request(
            "A job cannot stream; poll GET /api/jobs/{id} or use callback_url.", param="stream", code="invalid_value"
        )
    callback_url = _callback_url_check(body.get("callback_url"))
    return Job.objects.create(
        tenant_id=principal.tenant_id,
        team_id=principal.team_id,
        api_key_id=principal.key_id,
        body=request,
        callback_url=callback_url,
        webhook_state=WebhookState.PENDING if callback_url else WebhookState.NONE,
    )


def job_request_id(job_id: str) -> str:
    """One ledger row per job however often a worker retries it."""
    return f"req_j{hashlib.sha256(job_id.encode()).hexdigest()[:31]}"


def jobs_for_workers() -> QuerySet[Job]:
    """Every tenant's jobs, for the workers that run them and deliver their webhooks."""
    # Unscoped, reviewed: workers take job ids from their task queue, never from a client, and run each job under the
    # key that created it; clients reach jobs through _job_get in jobs/views.py, within their tenant.
    return Job.objects.unscoped()


def _job_start(*, job_id: str) -> Job | None:
    updated = (
        jobs_for_workers()
        .filter(pk=job_id, status__in=(JobStatus.QUEUED, JobStatus.IN_PROGRESS))
        .update(status=JobStatus.IN_PROGRESS, started_at=timezone.now())
    )
    return jobs_for_workers().select_related("api_key").get(pk=job_id) if updated else None


def _job_finish(*, job_id: str, status_code: int, result: dict, request_id: str, usage: UsageEvent | None) -> None:
    """The job's answer and its ledger row in one transaction: its cost is its ledger row's, and a second run of the
    same job (a redelivered task) records nothing."""
    with transaction.atomic():
        finished = (
            jobs_for_workers()
            .filter(pk=job_id, status=JobStatus.IN_PROGRESS)
            .update(
                status=JobStatus.COMPLETED if status_code < 400 else JobStatus.FAILED,
                status_code=status_code,
                result=result,
                request_id=request_id,
                cost_usd=usage.cost_usd if usage is not None else None,
                finished_at=timezone.now(),
            )
        )
        if finished and usage is not None:
            usage_record_create(event=usage)


async def job_run(*, job_id: str) -> None:
    """Run the job's request through the gateway pipeline under the key that created it."""
    job = await database_sync_to_async(_job_start)(job_id=job_id)
    if job is None:
        return
    snapshot = await config_snapshot.for_tenant(job.api_key.tenant_id)
    principal = snapshot.keys.get(job.api_key.prefix)
    # Checked as a request's key is: revoked or expired since the job was queued, or its team or tenant disabled.
    refusal = key_refusal(principal) if principal is not None else "The job's API key no longer exists."
    call = None
    if refusal is not None:
        refused = GatewayError(refusal, status=401, code="invalid_api_key")
        status_code, body = refused.status_code, error_body(refused)
    else:
        call = GatewayCall(
            principal=principal, endpoint=JOBS_ENDPOINT, request_id=job_request_id(job.id), ledger_deferred=True
        )
        try:
            response = await chat_completion_run(call, snapshot=snapshot, read_body=lambda: dict(job.body), headers={})
            status_code, body = response.status_code, orjson.loads(response.content)
        except Exception as exc:
            error = as_gateway_error(exc) or GatewayError("Internal error.", status=500, code="internal_error")
            status_code, body = error.status_code, error_body(error)
    await database_sync_to_async(_job_finish)(
        job_id=job.id,
        status_code=status_code,
        result=body,
        request_id=call.request_id if call else "",
        usage=call.ledger_event if call else None,
    )


def job_webhook_secret(*, tenant_id: int) -> str:
    row = JobWebhookSecret.objects.for_tenant(tenant_id).first()
    if row is None:
        with transaction.atomic():
            row, _ = JobWebhookSecret.objects.for_tenant(tenant_id).get_or_create(
                tenant_id=tenant_id, defaults={"secret_encrypted": encrypt_secret(webhook_secret_new())}
            )
    return decrypt_secret(row.secret_encrypted)


def job_payload(job: Job) -> dict:
    def stamp(value):
        return int(value.timestamp()) if value else None

    return {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "created_at": stamp(job.created_at),
        "started_at": stamp(job.started_at),
        "finished_at": stamp(job.finished_at),
        "request_id": job.request_id or None,
        "status_code": job.status_code,
        "result": job.result,
        "cost_usd": f"{job.cost_usd:f}" if job.cost_usd is not None else None,
        "callback_url": job.callback_url or None,
        "webhook": {
            "state": job.webhook_state,
            "attempts": job.webhook_attempts,
            "delivered_at": stamp(job.webhook_delivered_at),
        },
    }


def job_webhook_attempt(*, job_id: str) -> None:
    """POST the finished job to its callback URL, signed; raises WebhookDeliveryError to be retried."""
    job = jobs_for_workers().get(pk=job_id)
    if job.webhook_state != WebhookState.PENDING or job.status not in (JobStatus.COMPLETED, JobStatus.FAILED):
        return
    body = orjson.dumps(job_payload(job))
    headers = {
        "Content-Type": "application/json",
        **webhook_headers(secret=job_webhook_secret(tenant_id=job.tenant_id), message_id=job.id, body=body),
    }
    jobs_for_workers().filter(pk=job_id).update(webhook_attempts=job.webhook_attempts + 1)
    try:
        answer = outbound_post(
            job.callback_url, content=body, headers=headers, timeout=settings.LLMOPS_JOBS_WEBHOOK_TIMEOUT_SECONDS
        )
    except (OutboundRefused, httpx.HTTPError) as exc:
        # One reason for a refused address and a failed connection, so the job never tells what is reachable.
        jobs_for_workers().filter(pk=job_id).update(webhook_last_error=WEBHOOK_UNREACHABLE)
        raise WebhookDeliveryError(WEBHOOK_UNREACHABLE) from exc
    if not 200 <= answer.status_code < 300:
        jobs_for_workers().filter(pk=job_id).update(webhook_last_error=f"HTTP {answer.status_code}")
        raise WebhookDeliveryError(f"callback answered {answer.status_code}")
    jobs_for_workers().filter(pk=job_id).update(
        webhook_state=WebhookState.DELIVERED, webhook_delivered_at=timezone.now()
    )


def job_webhook_give_up(*, job_id: str) -> None:
    jobs_for_workers().filter(pk=job_id, webhook_state=WebhookState.PENDING).update(webhook_state=WebhookState.FAILED)
