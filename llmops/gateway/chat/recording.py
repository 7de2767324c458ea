"""Settle and record: the budget reservation replaced by the actual cost, and the ledger row made durable."""

from billing.budgets.reservations import reservation_settle
from billing.ledger.costs import Usage, format_cost
from billing.ledger.events import UsageEvent
from billing.ledger.stream import ledger_event_append
from core.db import database_sync_to_async
from llmops.gateway.call import GatewayCall
from llmops.gateway.concurrency import inflight_release
from llmops.metrics import record_request_metrics
from tenants.payload_logs import payload_log_record


async def record_usage(event: UsageEvent) -> None:
    """Durable before the response completes: on the Redis ledger stream, or in the database without Redis."""
    await ledger_event_append(event=event)


async def finish(
    call: GatewayCall, *, http_status: int, usage: Usage | None = None, error_code: str = "", answer=None
) -> None:
    """Settle the budget reservation with what was really spent, write the ledger row, and the payload log
    when the tenant keeps one. Once per request: a later call (an error raised after finishing) does nothing."""
    if call.finished:
        return
    call.finished = True
    event = call.usage_event(http_status=http_status, usage=usage, error_code=error_code)
    call.settled_usage = event.usage
    record_request_metrics(event)
    # Work that writes its ledger row with its own result (batch lines, jobs) takes the event instead.
    if call.ledger_deferred:
        call.ledger_event = event
    recorded = None if call.ledger_deferred else event
    if call.inflight is not None and not call.is_stream:
        # Only the whole answer's write is left: the slot goes back now, its command in the same write to Redis as
        # the settle's below (both tasks' first steps come before the flush), not in one of its own after the answer.
        # A stream keeps its slot until its last part is written (concurrency.inflight_release_after).
        inflight_release(call.inflight)
    if call.reservation is not None and not call.reservation.settled:
        # Settled and recorded in one step, so a counter seeded from the ledger counts the request exactly once.
        remaining = await reservation_settle(
            call.reservation, actual=event.cost_usd, event=recorded, served_model=event.served_model
        )
        if remaining is not None:
            call.budget_remaining_usd = format_cost(remaining)
    elif recorded is not None:
        await record_usage(recorded)
    if call.payload_logging and call.request_body is not None:
        await database_sync_to_async(payload_log_record)(
            tenant_id=call.principal.tenant_id,
            request_id=call.request_id,
            request_body=call.request_body,
            response_body=answer,
        )
