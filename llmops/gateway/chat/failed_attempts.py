"""Upstream attempts that failed but that the provider may bill, metered as every upstream dollar is.

An attempt the provider answered with something the gateway cannot use (UpstreamInvalidResponse) is charged the
gateway's own count of it: the prompt, and whatever answer text arrived, at the tier the answer names. An attempt that
timed out once its request was sent (or that the call's deadline cut) is charged its prompt: the least a provider
bills for a request it received, as how much of an answer it wrote is not known.

Each failed attempt of the chain before its last has a ledger row of its own (kind `failed_attempt`, a request id
of its own, its `parent_request_id` the request, its `served_model` the model it was made to, priced at that model's
prices), settled against the request's budgets in the same step, as a compression summary's is; the request's own row
charges what ended it (the answer that served, or the last failure). The request reserved one attempt's worst case,
so these charges come on top of it. A charge that fails is logged and leaves the request's outcome as it was.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence

from billing.ledger.costs import Usage
from billing.models import UsageKind
from core.background import run_in_background
from llmops.gateway.call import GatewayCall, new_request_id
from llmops.gateway.chat.recording import finish
from llmops.gateway.errors import upstream_failure
from routing import upstream
from routing.catalog import ModelEntry
from routing.resilience import BilledFailure

logger = logging.getLogger(__name__)

# The gateway's count of what an answer of a model that wrote the given text used, the prompt included.
Estimate = Callable[[ModelEntry, str], Awaitable[Usage]]


async def failure_usage(
    call: GatewayCall, error: upstream.UpstreamError, model: ModelEntry, estimate: Estimate
) -> Usage:
    """What ``call`` (a failed attempt's row, or a request whose last attempt failed so) is charged for an attempt
    that ``error`` ended and that the provider may bill; sets the tier an unusable answer names on it."""
    if isinstance(error, upstream.UpstreamInvalidResponse):
        call.service_tier = error.service_tier
    return await billed_failure_usage(error, model, estimate)


async def billed_failure_usage(error: upstream.UpstreamError, model: ModelEntry, estimate: Estimate) -> Usage:
    """What a call of ``model`` that ``error`` ended and that the provider may bill is charged, by whoever made it (a
    request's attempt, the gateway's own call): the prompt, and the text of an unusable answer."""
    written = error.completion_text if isinstance(error, upstream.UpstreamInvalidResponse) else ""
    return await estimate(model, written)


async def failed_attempts_charge(call: GatewayCall, failures: Sequence[BilledFailure], *, estimate: Estimate) -> None:
    """Charge ``call``'s failed attempts that the provider may bill. A live request's are charged on a task of their
    own (``failed_attempts_charge_detached``) and this returns without suspending: no cancel (the client going away)
    can land here while the caller holds an answer not yet settled or an opened stream, nor cut the charges short.
    Work a worker runs (``call.ledger_deferred``: batch lines, jobs) waits for them: its loop may not run again once
    it returns, and a batch line writes their rows with its own."""
    if call.ledger_deferred:
        await _charge_each(call, failures, estimate)
    else:
        failed_attempts_charge_detached(call, failures, estimate=estimate)


def failed_attempts_charge_detached(
    call: GatewayCall, failures: Sequence[BilledFailure], *, estimate: Estimate
) -> None:
    """Charge them on a task of their own, which a cancel of the request's task does not reach (core.background)."""
    if failures:
        run_in_background(_charge_each(call, failures, estimate))


async def _charge_each(call: GatewayCall, failures: Sequence[BilledFailure], estimate: Estimate) -> None:
    """A ledger row for each, charged to its budgets; work that writes its ledger rows with its result
    (``call.linked_events``) gets the rows' events instead. One that cannot be charged (the ledger or the counters
    away) is logged with what it cost: the request's own answer or error stands, and the others are charged."""
    for failure in failures:
        attempt = _attempt_call(call, failure)
        try:
            usage = await failure_usage(attempt, failure.error, failure.model, estimate)
            shown = upstream_failure(failure.error)
            await finish(attempt, http_status=shown.status_code, usage=usage, error_code=shown.code)
        except Exception:
            amount = f"{attempt.cost_usd} USD" if attempt.cost_usd is not None else "a cost not yet counted"
            logger.exception(
                "request %s: failed attempt %d (%s) not charged, %s",
                call.request_id,
                failure.attempt,
                attempt.request_id,
                amount,
            )
            continue
        if attempt.ledger_event is not None:
            call.linked_events.append(attempt.ledger_event)


def _attempt_call(call: GatewayCall, failure: BilledFailure) -> GatewayCall:
    """The failed attempt as a call of its own: the request's facts that say whose and what it was, none that claim
    a saving (routing's, compression's), and a reservation of nothing under the request's budgets."""
    # An id of its own, not one made from the request's: a job run again after its worker died keeps its request id
    # and makes its attempts again, and the ledger drops a row whose id it has (ON CONFLICT DO NOTHING) while the
    # budget counters were charged for it.
    request_id = new_request_id()
    reservation = call.reservation.for_extra_cost(request_id=request_id) if call.reservation is not None else None
    return GatewayCall(
        principal=call.principal,
        request_id=request_id,
        # The request's time: the row falls in the budget periods the request's reservation holds.
        created_at=call.created_at,
        endpoint=call.endpoint,
        requested_model=call.requested_model,
        is_stream=call.is_stream,
        cache_status=call.cache_status,
        route=call.route,
        policy_version=call.policy_version,
        tags=call.tags,
        customer=call.customer,
        kind=UsageKind.FAILED_ATTEMPT,
        parent_request_id=call.request_id,
        attempts=1,
        served=failure.model,
        upstream_ms=failure.error.elapsed_ms,
        reservation=reservation,
        ledger_deferred=call.linked_events is not None,
    )
