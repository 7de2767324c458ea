"""Rate limits, the tenant's cap on requests in flight and budget reservations, after the route is known and before
the upstream call.

A budget is a promise: the worst-case cost of the request (llmops.gateway.chat.worst_case: every choice at its
max_tokens or the model's maximum output, on the dearest model of the chain) is reserved atomically against every
budget in scope before anything is spent, and replaced by the actual cost afterwards. Token rate limits count the same
worst case in tokens. Requests in flight are counted per tenant across processes (llmops.gateway.concurrency).
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from billing.budgets.index import BudgetEntry
from billing.budgets.reservations import (
    BudgetExceeded,
    BudgetUnavailable,
    Reservation,
    budget_reserve,
    reservation_settle,
)
from billing.ledger.costs import format_cost
from billing.ratelimits import RateLimitResult, rate_limit_check
from core.background import run_in_background
from core.cpu import run_sized
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.planning import ChatPlan, model_lacks
from llmops.gateway.chat.worst_case import (
    OutputBound,
    budget_refusal,
    cache_writers,
    chain_worst_case,
    fitting_max_tokens,
    prediction_chars,
)
from llmops.gateway.concurrency import InflightSlot, inflight_acquire, inflight_limit, inflight_release
from llmops.gateway.errors import NOT_RETRYABLE, GatewayError
from llmops.gateway.snapshot import ConfigSnapshot
from routing.catalog import ModelEntry
from routing.max_tokens import with_max_tokens
from routing.media import PromptMedia


def _default_model(snapshot: ConfigSnapshot, call: GatewayCall) -> ModelEntry | None:
    catalog = snapshot.catalog
    return catalog.models.get(catalog.access_for(call.principal.tenant_id).default_model or "")


def _cheaper_route(
    snapshot: ConfigSnapshot,
    call: GatewayCall,
    plan: ChatPlan,
    *,
    prompt_tokens: int,
    bound: OutputBound,
    writers: frozenset[str],
    media: PromptMedia,
) -> ModelEntry | None:
    """The cheapest of the chain's fallbacks and the tenant's default model that can take the request, if it costs
    less than the primary."""
    default = _default_model(snapshot, call)
    candidates = [
        model for model in [*plan.chain[1:], *([default] if default else [])] if model_lacks(model, call) is None
    ]

    def worst(model: ModelEntry) -> Decimal:
        return chain_worst_case(
            [model],
            prompt_tokens=prompt_tokens,
            bound=bound,
            fallback=_fallback(),
            cache_writers=writers,
            media=media,
            counted_for=plan.chain[0].upstream_name,
        )

    primary_cost = worst(plan.chain[0])
    priced = [(worst(m), m.name, m) for m in candidates]
    cheaper = sorted(entry for entry in priced if entry[0] < primary_cost)
    return cheaper[0][2] if cheaper else None


def _fallback() -> int:
    return settings.LLMOPS_RESERVATION_MAX_TOKENS


def _count_or_refuse(call: GatewayCall, limited: RateLimitResult) -> None:
    call.extra_headers.update(limited.headers)
    if limited.too_large is not None:
        requested, limit = limited.too_large
        raise GatewayError(
            f"Request too large for {limited.refused_by}: it counts {requested} tokens (the prompt, its images and "
            f"files at the most they may bill, and every choice's output) and the limit is {limit} tokens per minute, "
            "so no retry can succeed. Send a shorter prompt, fewer images or files, or a smaller max_tokens or n.",
            status=429,
            code="rate_limit_exceeded",
            headers=NOT_RETRYABLE,
        )
    if not limited.allowed:
        raise GatewayError(
            f"Rate limit reached for {limited.refused_by or 'your key or team'}; retry after the time in Retry-After.",
            status=429,
            code="rate_limit_exceeded",
            headers={"Retry-After": str(limited.retry_after_seconds)},
        )


def _tokens_limited(snapshot: ConfigSnapshot, call: GatewayCall) -> bool:
    principal = call.principal
    limits = snapshot.rate_limits.applicable(key_id=principal.key_id, team_id=principal.team_id, customer=call.customer)
    return any(limit.tokens_per_minute is not None for limit in limits)


def _bounded(plan: ChatPlan, bound: OutputBound) -> OutputBound:
    """Without max_tokens a model the catalog knows no maximum output for could answer without end: send the
    reservation's cap as max_tokens so the worst case (a budget's reservation, a token rate limit's count) is a true
    bound. The cache key was made from the body without the cap, which other requests (a team held to neither) share:
    an answer that reaches the cap is not stored."""
    if bound.max_tokens is not None or all(model.max_output_tokens for model in plan.chain):
        return bound
    plan.body = with_max_tokens(plan.body, _fallback())
    if plan.cache is not None:
        plan.cache.added_max_tokens = _fallback()
    return OutputBound(_fallback(), bound.choices, bound.predicted_tokens)


def _refusal(
    exceeded: BudgetExceeded,
    chain: list[ModelEntry],
    *,
    prompt_tokens: int,
    bound: OutputBound,
    writers: frozenset[str],
    media: PromptMedia,
    counted_for: str,
):
    fitting = fitting_max_tokens(
        chain,
        prompt_tokens=prompt_tokens,
        bound=bound,
        fallback=_fallback(),
        available=exceeded.remaining_usd,
        cache_writers=writers,
        media=media,
        counted_for=counted_for,
    )
    return budget_refusal(exceeded, fitting=fitting, choices=bound.choices, has_media=bool(media))


async def _nothing() -> None:
    return None


def _finished_with(task: asyncio.Future, kind: type) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None and isinstance(task.result(), kind)


async def admission_hold(
    snapshot: ConfigSnapshot,
    call: GatewayCall,
    *,
    budgets: list[BudgetEntry],
    tokens: int,
    amount: Decimal,
    limit_concurrency: bool = False,
    counted: bool = False,
) -> Reservation | BudgetExceeded | None:
    """Count the request's ``tokens`` against rate limits, take one of its tenant's slots for requests in flight
    (with `limit_concurrency`: live /v1 requests) and reserve ``amount``, its worst case, against ``budgets``: the
    admission of every endpoint. Returns the reservation (None without budgets), or the budget's refusal for the
    caller to downgrade or answer; raises every other refusal. A slot taken is left on ``call.inflight`` for the
    caller to give back when the request ends, refused here or not. With ``counted`` (``SummaryAdmission`` did so
    before its compression summary) the request is not counted against request limits again, nor takes a slot."""
    principal = call.principal
    now = timezone.now()
    customer = call.customer
    counting = rate_limit_check(
        limits=snapshot.rate_limits,
        key_id=principal.key_id,
        team_id=principal.team_id,
        tokens=tokens,
        now=now,
        customer=customer,
        requests=0 if counted else 1,
    )
    inflight_cap = inflight_limit(snapshot.max_inflight) if limit_concurrency and not counted else 0
    if not budgets and not inflight_cap:
        _count_or_refuse(call, await counting)
        return None
    # Counted, held and reserved at once: one wait on Redis instead of three. The rate limit still decides first,
    # then the tenant's cap on requests in flight; a reservation made for a request either refuses is released
    # straight away.
    acquiring = asyncio.ensure_future(
        inflight_acquire(tenant_id=principal.tenant_id, request_id=call.request_id, limit=inflight_cap)
        if inflight_cap
        else _nothing()
    )
    reserving = asyncio.ensure_future(
        budget_reserve(budgets=budgets, amount=amount, request_id=call.request_id, now=now, customer=customer)
        if budgets
        else _nothing()
    )
    try:
        limited, slot, reserved = await asyncio.gather(counting, acquiring, reserving, return_exceptions=True)
    except asyncio.CancelledError:
        # The client went away while another wait was still on: what was taken already is given back, as nobody
        # else will (a reserve cut short releases itself).
        if _finished_with(reserving, Reservation):
            run_in_background(reservation_settle(reserving.result(), actual=Decimal(0)))
        if _finished_with(acquiring, InflightSlot):
            inflight_release(acquiring.result())
        raise
    if isinstance(slot, InflightSlot):
        call.inflight = slot
    refused = isinstance(limited, BaseException) or not limited.allowed or isinstance(slot, BaseException)
    if refused and isinstance(reserved, Reservation):
        await reservation_settle(reserved, actual=Decimal(0))
    if isinstance(limited, BaseException):
        raise limited
    _count_or_refuse(call, limited)
    if isinstance(slot, BaseException):
        raise slot
    if isinstance(reserved, BudgetUnavailable):
        raise _unavailable(reserved) from reserved
    if isinstance(reserved, BaseException) and not isinstance(reserved, BudgetExceeded):
        raise reserved
    return reserved


def _unavailable(error: BudgetUnavailable) -> GatewayError:
    """A budget's counter could not be read or seeded: the request is refused for now, never admitted unbudgeted."""
    return GatewayError(str(error), status=503, code="budget_unavailable")


def reservation_keep(call: GatewayCall, reservation: Reservation) -> None:
    """The request holds ``reservation`` until it is settled, and says what the tightest budget has left."""
    call.reservation = reservation
    if reservation.remaining_usd is not None:
        call.budget_remaining_usd = format_cost(reservation.remaining_usd)


async def admit_uncharged(snapshot: ConfigSnapshot, call: GatewayCall) -> None:
    """Admit a live request that calls no provider and costs nothing (/v1/messages/count_tokens): counted against the
    request rate limits (no tokens; ``call.customer``'s too), holding one of its tenant's slots for requests in flight
    (``call.inflight``, for the caller to give back), refused as ``admit`` refuses; no budget is reserved."""
    await admission_hold(snapshot, call, budgets=[], tokens=0, amount=Decimal(0), limit_concurrency=True)


@dataclass(slots=True)
class SummaryAdmission:
    """A chat completion's request limits and slot for requests in flight, taken before its compression summary is
    paid for (plan_chat's ``admit_summary``), so a request they refuse costs no summary. Its tokens are counted by
    ``admit``, once it is compressed: counted here, a long dropped transcript alone could be "too large" for a token
    limit that the compressed request fits. ``counted`` once it did: ``admit`` then counts the request's tokens only."""

    snapshot: ConfigSnapshot
    call: GatewayCall
    limit_concurrency: bool = False
    counted: bool = False

    async def __call__(self) -> None:
        await admission_hold(
            self.snapshot,
            self.call,
            budgets=[],
            tokens=0,
            amount=Decimal(0),
            limit_concurrency=self.limit_concurrency,
            counted=self.counted,
        )
        self.counted = True


async def admit(
    snapshot: ConfigSnapshot,
    call: GatewayCall,
    plan: ChatPlan,
    *,
    limit_concurrency: bool = False,
    counted: bool = False,
) -> None:
    """Admit a chat completion (``admission_hold``) at its worst case, or refuse it; a blocking budget it would go
    over refuses it, or downgrades it to a cheaper route when the budget says so. ``counted``: its summary's
    ``SummaryAdmission`` counted the request and took its slot."""
    prompt_tokens = call.prompt_tokens_after_compression or 0
    # The prompt was counted for the routed model: any other model of the chain, or one downgraded to, is priced at
    # the margin its own count may add (worst_case.counted_exactly).
    counted_for = plan.chain[0].upstream_name
    budgets = chain_budgets(snapshot, call, plan.chain)
    bound = await run_sized(prediction_chars(plan.body), OutputBound.of, plan.body, model=plan.chain[0].upstream_name)
    if budgets or _tokens_limited(snapshot, call):
        bound = _bounded(plan, bound)
    completion_tokens = max(bound.completion_tokens(model, fallback=_fallback()) for model in plan.chain)
    media = PromptMedia.of(plan.body["messages"])
    # The rate limit counts what the prompt may bill, its images included, as the budget reserves it.
    prompt_bound = max(media.prompt_tokens(model, prompt_tokens) for model in plan.chain)
    writers = frozenset()
    if budgets:
        default = _default_model(snapshot, call)
        models = [*plan.chain, *([default] if default else [])]
        writers = cache_writers(models, plan.body, provider_cache=plan.provider_cache)

    def worst_case(chain: list[ModelEntry]) -> Decimal:
        return chain_worst_case(
            chain,
            prompt_tokens=prompt_tokens,
            bound=bound,
            fallback=_fallback(),
            cache_writers=writers,
            media=media,
            counted_for=counted_for,
        )

    reserved = await admission_hold(
        snapshot,
        call,
        budgets=budgets,
        tokens=prompt_bound + completion_tokens,
        amount=worst_case(plan.chain) if budgets else Decimal(0),
        limit_concurrency=limit_concurrency,
        counted=counted,
    )
    if reserved is None:
        return
    plan.chain, reserved = await without_spent_fallbacks(snapshot, call, plan.chain, reserved, worst_case=worst_case)
    if isinstance(reserved, BudgetExceeded):
        cheaper = _cheaper_route(
            snapshot, call, plan, prompt_tokens=prompt_tokens, bound=bound, writers=writers, media=media
        )
        if not reserved.downgrade or cheaper is None:
            # Whatever refuses now refuses the first model itself (a fallback it alone refused was left out): the
            # max_tokens that would fit is the first model's.
            raise _refusal(
                reserved,
                plan.chain[:1],
                prompt_tokens=prompt_tokens,
                bound=bound,
                writers=writers,
                media=media,
                counted_for=counted_for,
            ) from reserved
        call.downgraded_from = plan.chain[0]
        plan.chain = [cheaper]
        bound = _bounded(plan, bound)
        call.served, call.route = cheaper, f"{call.route}+budget-downgrade"
        call.route_explanation = f"{call.route_explanation} budget-downgrade={cheaper.name}"
        reserved = await _reserve_or_exceeded(
            chain_budgets(snapshot, call, [cheaper]), worst_case([cheaper]), call=call
        )
        if isinstance(reserved, BudgetExceeded):
            raise _refusal(
                reserved,
                [cheaper],
                prompt_tokens=prompt_tokens,
                bound=bound,
                writers=writers,
                media=media,
                counted_for=counted_for,
            ) from reserved
    reservation_keep(call, reserved)


def chain_budgets(snapshot: ConfigSnapshot, call: GatewayCall, chain: list[ModelEntry]) -> list[BudgetEntry]:
    """The budgets of every model of the chain, as any of them may serve; settling charges the one that did."""
    principal = call.principal
    return snapshot.budgets.for_chain(
        principal.tenant_id, principal.team_id, principal.key_id, {model.name for model in chain}, call.customer
    )


async def without_spent_fallbacks(
    snapshot: ConfigSnapshot,
    call: GatewayCall,
    chain: list[ModelEntry],
    reserved: Reservation | BudgetExceeded,
    *,
    worst_case: Callable[[list[ModelEntry]], Decimal],
) -> tuple[list[ModelEntry], Reservation | BudgetExceeded]:
    """The chain and its reservation once every fallback the refusing budget cannot hold is left out of it, rather
    than refusing a request the models before it may serve: a fallback whose own model budget refused, or, when
    another budget refused (the chain's worst case is its dearest model's), each fallback whose worst case alone is
    more than that budget has left, provided the first model's fits. `worst_case` prices a chain."""
    while isinstance(reserved, BudgetExceeded):
        skipped = _fallbacks_refused(reserved, chain, worst_case=worst_case)
        if not skipped:
            break
        chain = [model for model in chain if model.name not in skipped]
        call.route_explanation += "".join(f" budget-skipped={name}" for name in skipped)
        reserved = await _reserve_or_exceeded(chain_budgets(snapshot, call, chain), worst_case(chain), call=call)
    return chain, reserved


def _fallbacks_refused(
    exceeded: BudgetExceeded, chain: list[ModelEntry], *, worst_case: Callable[[list[ModelEntry]], Decimal]
) -> list[str]:
    """The fallbacks (never the first model) that leaving out lets the refusing budget hold the request, in order."""
    first = chain[0]
    fallbacks = [model for model in chain[1:] if model.name != first.name]
    if exceeded.model_name in {model.name for model in fallbacks}:
        return [exceeded.model_name]
    if not fallbacks or worst_case([first]) > exceeded.remaining_usd:
        return []
    return [model.name for model in fallbacks if worst_case([model]) > exceeded.remaining_usd]


async def _reserve_or_exceeded(budgets: list[BudgetEntry], amount: Decimal, *, call: GatewayCall):
    """A reservation made after admission's (a shorter chain's, a downgrade's), or the budget's refusal."""
    try:
        return await budget_reserve(
            budgets=budgets, amount=amount, request_id=call.request_id, now=timezone.now(), customer=call.customer
        )
    except BudgetExceeded as exceeded:
        return exceeded
    except BudgetUnavailable as unavailable:
        raise _unavailable(unavailable) from unavailable
