"""Upstream attempts that failed but that the provider may bill, metered as every upstream dollar is.

An attempt the provider answered with something the gateway cannot use (UpstreamInvalidResponse) is charged the
gateway's own count of it: the prompt, and whatever answer text arrived, at the tier the answer names. An attempt that
timed out once its request was sent (or that the call's deadline cut) is charged its prompt: the least a provider
bills for a request it received, as how much of an answer it wrote is not known.

Each failed attempt of the chain before its last has a ledger row of its own (kind `failed_attempt`, its
`parent_request_id` the request, its `served_model` the model it was made to, priced at that model's prices), settled
against the request's budgets in the same step, as a compression summary's is; the request's own row charges what
ended it (the answer that served, or the last failure). The request reserved one attempt's worst case, so these
charges come on top of it.
"""

from collections.abc import Awaitable, Callable, Sequence

from billing.ledger.costs import Usage
from billing.models import UsageKind
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.recording import finish
from llmops.gateway.errors import upstream_failure
from routing import upstream
from routing.catalog import ModelEntry
from routing.resilience import BilledFailure

# The gateway's count of what an answer of a model that wrote the given text used, the prompt included.
Estimate = Callable[[ModelEntry, str], Awaitable[Usage]]


async def failure_usage(
    call: GatewayCall, error: upstream.UpstreamError, model: ModelEntry, estimate: Estimate
) -> Usage:
    """What ``call`` (a failed attempt's row, or a request whose last attempt failed so) is charged for an attempt
    that ``error`` ended and that the provider may bill; sets the tier an unusable answer names on it."""
    if isinstance(error, upstream.UpstreamInvalidResponse):
        call.service_tier = error.service_tier
        return await estimate(model, error.completion_text)
    return await estimate(model, "")


async def failed_attempts_charge(call: GatewayCall, failures: Sequence[BilledFailure], *, estimate: Estimate) -> None:
    """A ledger row for each of ``call``'s failed attempts that the provider may bill, charged to its budgets; work
    that writes its ledger rows with its result (``call.linked_events``) gets the rows' events instead."""
    for failure in failures:
        attempt = _attempt_call(call, failure)
        usage = await failure_usage(attempt, failure.error, failure.model, estimate)
        shown = upstream_failure(failure.error)
        await finish(attempt, http_status=shown.status_code, usage=usage, error_code=shown.code)
        if attempt.ledger_event is not None:
            call.linked_events.append(attempt.ledger_event)


def _attempt_call(call: GatewayCall, failure: BilledFailure) -> GatewayCall:
    """The failed attempt as a call of its own: the request's facts that say whose and what it was, none that claim
    a saving (routing's, compression's), and a reservation of nothing under the request's budgets."""
    request_id = f"{call.request_id}-attempt-{failure.attempt}"
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
