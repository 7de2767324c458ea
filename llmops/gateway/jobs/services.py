"""Async single jobs: one chat completion run in the background, its answer kept and sent to a signed webhook.

The webhook is signed as Standard Webhooks (core.webhooks) under the tenant's webhook secret
(``GET /api/jobs/webhook-secret``); its ``webhook-id`` is the job's id.
"""

import hashlib
import logging
from dataclasses import dataclass

import httpx
import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from billing.budgets.reservations import BudgetHold, budget_charge
from billing.ledger.costs import Usage
from billing.ledger.events import UsageEvent
from billing.ledger.services import usage_record_create
from billing.models import UsageKind
from core.crypto import decrypt_secret, encrypt_secret
from core.db import database_sync_to_async, unstorable_part
from core.outbound import OutboundRefused, outbound_post, outbound_url_errors
from core.webhooks import webhook_headers, webhook_secret_new
from llmops.gateway.batches.holds import hold_release, hold_state
from llmops.gateway.batches.models import Job, JobStatus, JobWebhookSecret, WebhookState
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.completion import chat_completion_run
from llmops.gateway.chat.recording import finish
from llmops.gateway.chat.validation import _type_error, _value_error, validate_chat_request, validate_storable
from llmops.gateway.errors import (
    GatewayError,
    as_gateway_error,
    error_body,
    internal_error,
    invalid_request,
    unstorable_answer_error,
)
from llmops.gateway.snapshot import ConfigSnapshot, config_snapshot
from tenants.authentication import KeyPrincipal, key_refusal

logger = logging.getLogger(__name__)

JOBS_ENDPOINT = "/api/jobs"

CALLBACK_URL_MAX_LENGTH = Job._meta.get_field("callback_url").max_length

WEBHOOK_UNREACHABLE = "The callback URL could not be reached."
CALLBACK_URL_REFUSED = "callback_url is not allowed: it must be an http(s) URL of a public host."
# The failed attempt that charges the upstream call of a run whose worker died during it.
WORKER_LOST_STATUS, WORKER_LOST_CODE = 500, "worker_lost"


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


def _job_start(*, job_id: str) -> tuple[Job, dict | None] | None:
    """The job taken to in_progress, with the upstream call its last run left in flight (``Job.call_in_flight``: set
    when that run's worker died during it, the task delivered again), taken off the job so only this run charges it;
    None when the job has finished."""
    with transaction.atomic():
        job = (
            jobs_for_workers()
            .select_for_update(of=("self",))
            .select_related("api_key")
            .filter(pk=job_id, status__in=(JobStatus.QUEUED, JobStatus.IN_PROGRESS))
            .first()
        )
        if job is None:
            return None
        interrupted = job.call_in_flight
        job.status, job.started_at, job.call_in_flight = JobStatus.IN_PROGRESS, timezone.now(), None
        job.save(update_fields=["status", "started_at", "call_in_flight"])
    return job, interrupted


def _job_call_note(*, job_id: str, note: dict | None) -> None:
    jobs_for_workers().filter(pk=job_id, status=JobStatus.IN_PROGRESS).update(call_in_flight=note)


@dataclass(frozen=True, slots=True)
class JobCallNote:
    """Keeps the job's upstream call noted on the job while it may be under way (``Job.call_in_flight``): what it holds
    against the budgets and what its prompt costs, for the job's next run to release and charge should the worker die
    during it (``_interrupted_call_charge``). Cleared when the chain ends, before its attempts and answer are charged,
    so a call the ledger records is never charged again."""

    job_id: str

    async def started(self, call: GatewayCall) -> None:
        held = call.reservation
        hold = None
        if held is not None:
            # An instant of every hold's period (the latest of their starts), from which the next run rebuilds the
            # holds admission made: the chain's own start could fall in the next period.
            reserved_at = max((budget.window.start for budget in held.holds), default=call.created_at)
            hold = hold_state(held, reserved_at=reserved_at, customer=call.customer)
        await self._write(
            {
                "model": call.served.name,
                "prompt_tokens": call.prompt_tokens_after_compression or 0,
                "customer": call.customer,
                "hold": hold,
            }
        )

    async def ended(self, call: GatewayCall) -> None:
        await self._write(None)

    async def _write(self, note: dict | None) -> None:
        try:
            await database_sync_to_async(_job_call_note)(job_id=self.job_id, note=note)
        except Exception:
            logger.exception("job %s: its upstream call's note is not written", self.job_id)


async def _interrupted_call_charge(
    snapshot: ConfigSnapshot, principal: KeyPrincipal | None, *, job: Job, note: dict
) -> None:
    """The upstream call of the job's last run, whose worker died during it (``note``, its ``Job.call_in_flight``):
    what it held against the budgets is released, and the call is charged its prompt at the chain's first model, as
    a failed attempt (``worker_lost``): the least a provider bills for a request it received, as for a timeout once
    the request was sent. A charge that fails is logged, and the run goes on."""
    try:
        if note["hold"] is not None:
            await hold_release(snapshot, tenant_id=job.tenant_id, state=note["hold"])
        model = snapshot.catalog.models.get(note["model"])
        if principal is None or model is None:
            logger.warning("job %s: the call of its run whose worker died is not charged: key or model gone", job.id)
            return
        attempt = GatewayCall(
            principal=principal,
            endpoint=JOBS_ENDPOINT,
            requested_model=job.body["model"],
            customer=note["customer"],
            kind=UsageKind.FAILED_ATTEMPT,
            parent_request_id=job_request_id(job.id),
            attempts=1,
            served=model,
            ledger_deferred=True,
        )
        usage = Usage(prompt_tokens=note["prompt_tokens"], estimated=True)
        await finish(attempt, http_status=WORKER_LOST_STATUS, usage=usage, error_code=WORKER_LOST_CODE)
        budgets = snapshot.budgets.applicable(
            principal.tenant_id, principal.team_id, principal.key_id, model.name, attempt.customer
        )
        event = attempt.ledger_event
        await budget_charge(
            holds=tuple(BudgetHold.of(entry, now=attempt.created_at, customer=attempt.customer) for entry in budgets),
            request_id=attempt.request_id,
            actual=event.cost_usd,
            event=event,
            served_model=model.name,
        )
    except Exception:
        logger.exception("job %s: the call of its run whose worker died is not charged", job.id)


def _job_finish(*, job_id: str, status_code: int, result: dict, request_id: str, usage: UsageEvent | None) -> bool:
    """The job's answer and its ledger row in one transaction: its cost is its ledger row's, and a second run of the
    same job (a redelivered task) records nothing. Returns whether this finished the job."""
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
                call_in_flight=None,
            )
        )
        if finished and usage is not None:
            usage_record_create(event=usage)
    return bool(finished)


async def _job_record(*, job_id: str, status_code: int, body: dict, call: GatewayCall | None) -> bool:
    """Record how the job ended (``_job_finish``); an answer the database could not give back as it was sent (a NUL
    character, a number beyond ±2^63) ends it failed, its call's ledger row kept."""
    unstorable = unstorable_part(body)
    if unstorable is not None:
        error = unstorable_answer_error(*unstorable, holder="the job", charged_in="cost_usd")
        status_code, body = error.status_code, error_body(error)
    return await database_sync_to_async(_job_finish)(
        job_id=job_id,
        status_code=status_code,
        result=body,
        request_id=call.request_id if call is not None else "",
        usage=call.ledger_event if call is not None else None,
    )


async def job_run(*, job_id: str) -> bool:
    """Run the job's request through the gateway pipeline under the key that created it, and record how it ended.
    Returns whether this run finished the job: a task delivered again for a finished job does nothing.

    Whatever fails once the job is in progress ends it failed (500 ``internal_error``) with the ledger row of a call
    it made, rather than leave it in progress for good, its key, team and tenant kept from deletion."""
    started = await database_sync_to_async(_job_start)(job_id=job_id)
    if started is None:
        return False
    job, interrupted = started
    call = None
    try:
        snapshot = await config_snapshot.for_tenant(job.api_key.tenant_id)
        principal = snapshot.keys.get(job.api_key.prefix)
        if interrupted is not None:
            await _interrupted_call_charge(snapshot, principal, job=job, note=interrupted)
        # Checked as a request's key is: revoked or expired since the job was queued, or its team or tenant disabled.
        refusal = key_refusal(principal) if principal is not None else "The job's API key no longer exists."
        if refusal is not None:
            refused = GatewayError(refusal, status=401, code="invalid_api_key")
            return await _job_record(
                job_id=job.id, status_code=refused.status_code, body=error_body(refused), call=None
            )
        call = GatewayCall(
            principal=principal,
            endpoint=JOBS_ENDPOINT,
            request_id=job_request_id(job.id),
            ledger_deferred=True,
            chain_watch=JobCallNote(job.id),
        )
        try:
            response = await chat_completion_run(call, snapshot=snapshot, read_body=lambda: dict(job.body), headers={})
            status_code, body = response.status_code, orjson.loads(response.content)
        except Exception as exc:
            error = as_gateway_error(exc) or internal_error()
            status_code, body = error.status_code, error_body(error)
        return await _job_record(job_id=job.id, status_code=status_code, body=body, call=call)
    except Exception:
        logger.exception("job %s failed after it started; it ends failed", job_id)
        failure = internal_error()
        return await _job_record(job_id=job.id, status_code=failure.status_code, body=error_body(failure), call=call)


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
    jobs_for_workers().filter(pk=job_id).update(webhook_attempts=F("webhook_attempts") + 1)
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


def job_webhook_unattempted(*, job_id: str) -> bool:
    """Whether the finished job's webhook is due and was never attempted."""
    return (
        jobs_for_workers()
        .filter(
            pk=job_id,
            status__in=(JobStatus.COMPLETED, JobStatus.FAILED),
            webhook_state=WebhookState.PENDING,
            webhook_attempts=0,
        )
        .exists()
    )


def job_webhook_give_up(*, job_id: str) -> None:
    jobs_for_workers().filter(pk=job_id, webhook_state=WebhookState.PENDING).update(webhook_state=WebhookState.FAILED)
