"""Running a batch's lines through the same pipeline as a synchronous call, in a Celery worker.

Each line is one ``chat_completion_run`` under the batch's key: routing, caps, budgets, rate limits and the ledger
apply as they do on /v1/chat/completions; its ledger row has endpoint ``/v1/batches`` and the tag ``batch:<id>``.

Concurrency is bounded within one event loop (a worker process runs its tasks on one), by asyncio semaphores:
LLMOPS_BATCH_TENANT_CONCURRENCY lines of one tenant in flight at once, and LLMOPS_BATCH_PROVIDER_CONCURRENCY lines
to one upstream provider (the provider of the model a line names; lines naming an alias share one slot group).
N worker processes allow N times as many. The semaphores are kept per loop, as a semaphore cannot outlive the loop
it was first waited on: in eager mode each thread that runs a batch has its own loop.
"""

import asyncio
import contextlib
import logging
import weakref

import orjson
from django.conf import settings

from billing.ledger.costs import BATCH_ENDPOINT
from core.db import database_sync_to_async
from llmops.gateway.batches import delegation
from llmops.gateway.batches.models import Batch, BatchStatus
from llmops.gateway.batches.selectors import batches_for_workers
from llmops.gateway.batches.services import (
    ClaimedLine,
    batch_expire_if_due,
    batch_finalize,
    batch_lease_acquire,
    batch_lease_release,
    batch_lease_renew,
    batch_stop,
    batch_validate,
    line_headers,
    line_record,
    line_request_id,
    lines_claim,
)
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.completion import chat_completion_run
from llmops.gateway.errors import GatewayError, as_gateway_error, error_body
from llmops.gateway.snapshot import ConfigSnapshot, config_snapshot
from tenants.authentication import KeyPrincipal, key_principal, key_refusal

logger = logging.getLogger(__name__)

ALIAS_SLOT = "(routed)"

# {event loop: {("tenant", id) or ("provider", name): semaphore}}; an entry goes with its loop.
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _slot(kind: str, key, size: int) -> asyncio.Semaphore:
    slots = _slots.setdefault(asyncio.get_running_loop(), {})
    if (kind, key) not in slots:
        slots[kind, key] = asyncio.Semaphore(size)
    return slots[kind, key]


def _db(function):
    return database_sync_to_async(function)


class KeyRefused(Exception):
    """The batch's key may no longer be used; the message says why."""


def batch_principal(*, batch: Batch) -> KeyPrincipal:
    """The batch's key as the database has it now, checked as authentication checks a request's (one query): raises
    KeyRefused for a key revoked or expired since the upload, or whose team or tenant was disabled."""
    principal = key_principal(tenant_id=batch.tenant_id, key_id=batch.api_key_id)
    refusal = key_refusal(principal) if principal is not None else "The batch's API key no longer exists."
    if refusal is not None:
        raise KeyRefused(refusal)
    return principal


async def _usable_principal(batch: Batch) -> KeyPrincipal | None:
    """The batch's key if it may still be used; else None, with the batch stopped (batch_stop) saying why."""
    try:
        return await _db(batch_principal)(batch=batch)
    except KeyRefused as refused:
        if await _db(batch_stop)(batch_id=batch.id, refusal=str(refused)):
            logger.warning("batch %s stops: %s", batch.id, refused)
        return None


async def batch_process(batch_id: str) -> None:
    """Validate if needed, run what is left to run, and finalize; nothing when another runner holds the batch.

    Safe to call again at any point: a runner that died leaves its lease to lapse, and the next one takes over.
    """
    owner = await _db(batch_lease_acquire)(batch_id=batch_id)
    if owner is None:
        return
    loop = asyncio.get_running_loop()
    work = loop.create_task(_process_leased(batch_id))
    heartbeat = loop.create_task(_renew_lease(batch_id, owner, work))
    try:
        await work
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():
            raise
        # The heartbeat stopped the work: the lease was taken over, and its new runner runs the lines.
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await _db(batch_lease_release)(batch_id=batch_id, owner=owner)


async def _renew_lease(batch_id: str, owner: str, work: asyncio.Task) -> None:
    """Renew the lease while ``work`` runs; stop the work once another runner has taken the lease over (after an
    outage longer than the lease): that runner put this one's running lines back to pending, and runs them."""
    while True:
        await asyncio.sleep(settings.LLMOPS_BATCH_LEASE_SECONDS / 3)
        try:
            if not await _db(batch_lease_renew)(batch_id=batch_id, owner=owner):
                logger.warning("batch %s: its lease lapsed and another runner took it over; this one stops", batch_id)
                work.cancel()
                return
        except Exception:
            # A renewal that fails (a database blip) is tried again at the next beat: ending here would let the lease
            # lapse while the lines run, and another runner would run them again.
            logger.exception("batch %s: renewing its lease failed", batch_id)


async def _process_leased(batch_id: str) -> None:
    batch = await _db(batches_for_workers().get)(pk=batch_id)
    snapshot = await config_snapshot.for_tenant(batch.tenant_id)
    principal = await _usable_principal(batch)
    if batch.status == BatchStatus.VALIDATING and principal is not None:
        batch = await _db(batch_validate)(batch=batch, snapshot=snapshot, principal=principal)
    await _db(batch_expire_if_due)(batch_id=batch_id)
    batch = await _db(batches_for_workers().get)(pk=batch_id)
    if batch.status == BatchStatus.IN_PROGRESS and principal is not None:
        await delegation.lines_delegate(batch=batch, principal=principal)
        await _run_lines(batch, principal)
    elif batch.provider_batches:
        # Lines already at a provider bill there whatever became of the key since: a cancel (or a refused key) is
        # forwarded to the provider batches, and what they answered is still collected and charged to the key.
        owner = principal or await _db(key_principal)(tenant_id=batch.tenant_id, key_id=batch.api_key_id)
        if owner is not None:
            await delegation.lines_delegate(batch=batch, principal=owner)
    await _db(batch_finalize)(batch_id=batch_id)


async def _run_lines(batch: Batch, principal: KeyPrincipal) -> None:
    """Line workers until no line is left to claim; one that fails stops the others (no task outlives the run)."""
    async with asyncio.TaskGroup() as workers:
        for _ in range(settings.LLMOPS_BATCH_TENANT_CONCURRENCY):
            workers.create_task(_line_worker(batch, principal))


async def _line_worker(batch: Batch, principal: KeyPrincipal) -> None:
    """Claims lines one by one while the key may be used: it is checked again before each claim, so a key revoked or
    expired mid-run, or a team or tenant disabled, sends nothing more (lines in flight finish)."""
    tenant_slot = _slot("tenant", principal.tenant_id, settings.LLMOPS_BATCH_TENANT_CONCURRENCY)
    while True:
        async with tenant_slot:
            principal = await _usable_principal(batch)
            if principal is None:
                return
            claimed = await _db(lines_claim)(batch_id=batch.id, limit=1)
            if not claimed:
                return
            await line_run(batch.id, principal, claimed[0])


def _provider_of(line: ClaimedLine, snapshot: ConfigSnapshot) -> str:
    model = snapshot.catalog.models.get(str(line.body.get("model")))
    return model.provider.name if model is not None else ALIAS_SLOT


async def line_run(batch_id: str, principal: KeyPrincipal, line: ClaimedLine) -> None:
    request_id = line_request_id(batch_id=batch_id, custom_id=line.custom_id, attempt=line.attempt)
    call = GatewayCall(
        principal=principal, endpoint=BATCH_ENDPOINT, request_id=request_id, ledger_deferred=True, linked_events=[]
    )
    snapshot = await config_snapshot.for_tenant(principal.tenant_id)
    provider_slot = _slot("provider", _provider_of(line, snapshot), settings.LLMOPS_BATCH_PROVIDER_CONCURRENCY)
    retryable = True
    async with provider_slot:
        try:
            response = await chat_completion_run(
                call, snapshot=snapshot, read_body=lambda: line.body, headers=line_headers(batch_id)
            )
            status_code, body = response.status_code, orjson.loads(response.content)
        except Exception as exc:
            error = as_gateway_error(exc)
            if error is None:
                logger.exception("batch %s line %s failed unexpectedly", batch_id, line.custom_id)
                error = GatewayError("Internal error.", status=500, code="internal_error")
            status_code, body, retryable = error.status_code, error_body(error), error.retryable
    await _db(line_record)(
        line=line,
        batch_id=batch_id,
        status_code=status_code,
        response_body=body,
        request_id=request_id,
        usage=call.ledger_event,
        linked=call.linked_events,
        retryable=retryable,
    )
