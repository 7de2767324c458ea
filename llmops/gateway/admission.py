"""Rate limits and budget reservations, after the route is known and before the upstream call.

A budget is a promise: the worst-case cost of the request (prompt tokens at the input price plus
max_tokens at the output price, on the dearest model of the chain) is reserved atomically against
every budget in scope before anything is spent, and replaced by the actual cost afterwards.
"""

import asyncio
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from billing.budgets.reservations import (
    BudgetExceeded,
    BudgetUnavailable,
    Reservation,
    budget_reserve,
    reservation_settle,
)
from billing.costs import format_cost, usage_cost
from billing.ratelimits import RateLimitResult, rate_limit_check
from llmops.gateway.call import GatewayCall
from llmops.gateway.errors import GatewayError
from llmops.gateway.planning import ChatPlan
from llmops.gateway.snapshot import ConfigSnapshot
from routing.catalog import ModelEntry

MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")


def _requested_max_tokens(body: dict) -> int | None:
    return next((body[field] for field in MAX_TOKENS_FIELDS if body.get(field) is not None), None)


def worst_case_cost(model: ModelEntry, *, prompt_tokens: int, max_tokens: int) -> Decimal:
    return usage_cost(prices=model.prices, prompt_tokens=prompt_tokens, cached_tokens=0, completion_tokens=max_tokens)


def _cheaper_route(
    snapshot: ConfigSnapshot, call: GatewayCall, plan: ChatPlan, *, prompt_tokens: int, max_tokens: int
) -> ModelEntry | None:
    """The cheapest of the chain's fallbacks and the tenant's default model, if it costs less than the primary."""
    catalog = snapshot.catalog
    default = catalog.models.get(catalog.access_for(call.principal.tenant_id).default_model or "")
    candidates = [*plan.chain[1:], *([default] if default else [])]
    primary_cost = worst_case_cost(plan.chain[0], prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    priced = [(worst_case_cost(m, prompt_tokens=prompt_tokens, max_tokens=max_tokens), m.name, m) for m in candidates]
    cheaper = sorted(entry for entry in priced if entry[0] < primary_cost)
    return cheaper[0][2] if cheaper else None


def _count_or_refuse(call: GatewayCall, limited: RateLimitResult) -> None:
    call.extra_headers.update(limited.headers)
    if not limited.allowed:
        raise GatewayError(
            "Rate limit reached for your key or team; retry after the time in Retry-After.",
            status=429,
            code="rate_limit_exceeded",
            headers={"Retry-After": str(limited.retry_after_seconds)},
        )


def _budget_exceeded(exceeded: BudgetExceeded) -> GatewayError:
    return GatewayError(
        str(exceeded),
        status=429,
        code="budget_exceeded",
        error_type="insufficient_quota",
        headers={"Retry-After": str(exceeded.retry_after_seconds)},
    )


async def admit(snapshot: ConfigSnapshot, call: GatewayCall, plan: ChatPlan) -> None:
    """Count the request against rate limits and reserve its worst case against budgets, or refuse it."""
    principal = call.principal
    now = timezone.now()
    prompt_tokens = call.prompt_tokens_after_compression or 0
    budgets = snapshot.budgets.applicable(principal.tenant_id, principal.team_id, principal.key_id, plan.chain[0].name)
    max_tokens = _requested_max_tokens(plan.body)
    if budgets and max_tokens is None:
        # Without a cap the worst case is unbounded; cap the answer so the reservation is a true bound.
        max_tokens = settings.LLMOPS_RESERVATION_MAX_TOKENS
        plan.body = {**plan.body, "max_tokens": max_tokens}

    counting = rate_limit_check(
        limits=snapshot.rate_limits,
        key_id=principal.key_id,
        team_id=principal.team_id,
        tokens=prompt_tokens + (max_tokens or 0),
        now=now,
    )
    if not budgets:
        _count_or_refuse(call, await counting)
        return
    amount = max(worst_case_cost(model, prompt_tokens=prompt_tokens, max_tokens=max_tokens) for model in plan.chain)
    # Counted and reserved at once: one wait on Redis instead of two. The rate limit still decides first, and a
    # reservation made for a request it refuses is released straight away.
    limited, reserved = await asyncio.gather(
        counting,
        budget_reserve(budgets=budgets, amount=amount, request_id=call.request_id, now=now),
        return_exceptions=True,
    )
    if isinstance(limited, BaseException) or not limited.allowed:
        if isinstance(reserved, Reservation):
            await reservation_settle(reserved, actual=Decimal(0))
        if isinstance(limited, BaseException):
            raise limited
    _count_or_refuse(call, limited)
    if isinstance(reserved, BudgetUnavailable):
        raise GatewayError(str(reserved), status=503, code="budget_unavailable") from reserved
    if isinstance(reserved, BudgetExceeded):
        cheaper = _cheaper_route(snapshot, call, plan, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        if not reserved.downgrade or cheaper is None:
            raise _budget_exceeded(reserved) from reserved
        plan.chain = [cheaper]
        call.served, call.route = cheaper, f"{call.route}+budget-downgrade"
        call.route_explanation = f"{call.route_explanation} budget-downgrade={cheaper.name}"
        budgets = snapshot.budgets.applicable(principal.tenant_id, principal.team_id, principal.key_id, cheaper.name)
        amount = worst_case_cost(cheaper, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        try:
            reserved = await budget_reserve(budgets=budgets, amount=amount, request_id=call.request_id, now=now)
        except BudgetExceeded as still_exceeded:
            raise _budget_exceeded(still_exceeded) from still_exceeded
    elif isinstance(reserved, BaseException):
        raise reserved
    call.reservation = reserved
    if call.reservation.remaining_usd is not None:
        call.budget_remaining_usd = format_cost(call.reservation.remaining_usd)
