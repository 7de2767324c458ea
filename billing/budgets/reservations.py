"""Hard budget enforcement by reservation, with no configuration query on the request path.

Before the upstream call the worst-case cost is reserved against every applicable budget at
once (all must pass); afterwards the reservation is replaced by the actual cost. Counters live
in Redis, one hash per budget and period (`llmops:budget:<id>:<period key>`, fields `spent` and
`reserved` in units of 1e-10 USD), changed by one Lua script so replicas cannot overshoot.
Without Redis the same happens in BudgetCounter rows under row locks. When Redis is configured
but unreachable, LLMOPS_BUDGET_REDIS_FAILURE decides: "database" uses the rows, "fail_closed"
(the default) refuses requests that an enforced budget covers — never silently open.
A counter that does not know the period's spend yet is seeded from the ledger first (billing.budgets.counters).
"""

import asyncio
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from billing.budgets.counters import (
    NEEDS_SEED,
    REFUSED,
    RESERVE_SCRIPT,
    SEEDING,
    SETTLE_SCRIPT,
    BudgetHold,
    counter_seed,
    database_counters_locked,
)
from billing.budgets.index import BudgetEntry, units_to_usd, usd_to_units
from billing.budgets.periods import BudgetWindow
from billing.budgets.thresholds import crossed_thresholds, refusal_alert_enqueue, threshold_alerts_enqueue
from billing.ledger.events import UsageEvent
from billing.ledger.services import usage_record_create
from billing.ledger.stream import STREAM_KEY, ledger_event_append, ledger_streaming, usage_event_encode
from billing.models import BudgetAction, BudgetScope
from core.background import run_in_background
from core.db import database_sync_to_async
from core.redis import async_redis

logger = logging.getLogger(__name__)

REDIS_FAILURE_DATABASE = "database"
# A request waits at most this long for another process to seed a counter it needs.
SEED_WAIT_SECONDS = 10.0
SEED_POLL_SECONDS = 0.01
# A settle that failed on Redis is sent again, pausing from the first to the most between tries, for this long.
RESETTLE_SECONDS = 300.0
RESETTLE_FIRST_PAUSE_SECONDS = 0.05
RESETTLE_MAX_PAUSE_SECONDS = 0.5


class BudgetExceeded(Exception):
    """An enforced budget would go over its limit. Answer 429 budget_exceeded, or downgrade when `downgrade`.

    The amounts say why: `spent_usd` settled this period, `reserved_usd` held by requests in flight, and
    `remaining_usd` what is left of `limit_usd` after both; `requested_usd` is this request's worst case.
    """

    def __init__(
        self, *, entry: BudgetEntry, window: BudgetWindow, now: datetime, spent_units: int, reserved_units: int,
        requested_units: int, customer: str = "",
    ):  # fmt: skip
        self.budget_id = entry.budget_id
        self.scope = entry.scope
        # The model a model budget is for ("" for other scopes): a chain's fallback it refuses is left out instead.
        self.model_name = entry.model_name if entry.scope == BudgetScope.TENANT_MODEL else ""
        # The customer whose own limit refused (customer scope), "" otherwise.
        self.customer = customer
        self.period_end = window.end
        self.retry_after_seconds = max(math.ceil((window.end - now).total_seconds()), 1)
        self.downgrade = entry.action == BudgetAction.DOWNGRADE
        self.limit_usd = entry.limit_usd
        self.spent_usd = units_to_usd(spent_units)
        self.reserved_usd = units_to_usd(reserved_units)
        self.remaining_usd = units_to_usd(max(entry.limit_units - spent_units - reserved_units, 0))
        self.requested_usd = units_to_usd(requested_units)
        scope = f"customer {customer!r}" if entry.per_customer else entry.scope
        budget = f"Budget {entry.budget_id} ({scope}, {entry.period} {window.key}) of ${entry.limit_usd:f}"
        if spent_units >= entry.limit_units:
            reason = f"is used up: ${self.spent_usd:f} spent."
        else:
            reason = (
                f"cannot hold this request's worst case of ${self.requested_usd:f}: ${self.spent_usd:f} spent, "
                f"${self.reserved_usd:f} reserved by requests in flight, ${self.remaining_usd:f} remains."
            )
        super().__init__(f"{budget} {reason} It resets at {window.end.isoformat()}.")


class BudgetUnavailable(Exception):
    """The budget counters cannot be reached and the configuration says to fail closed. Answer 503."""


@dataclass(slots=True)
class Reservation:
    request_id: str
    amount_units: int
    holds: tuple[BudgetHold, ...]
    backend: str  # "redis", "database", or "none" when nothing was counted
    remaining_usd: Decimal | None  # of the tightest budget; None when no budget applies
    settled: bool = False
    # What the Redis counters note it under (``held:<held_as>``): the request id and a token of this reserve, so a late
    # release of a reserve that got no reply cannot take a later reservation of the same request (a downgrade, a
    # job's next run).
    held_as: str = ""

    def for_extra_cost(self, *, request_id: str) -> "Reservation":
        """A reservation of nothing under the same budgets, for a cost of the request found only after its call, which
        this reservation does not hold (a failed upstream attempt the provider may bill): settled with its own ledger
        row (``request_id``), it charges the cost and releases nothing, so a budget may end over its limit by that
        much. Its Redis settle, if an outage loses it, is not charged once Redis answers (no hold is noted to match
        it by): the nightly check (budget_counters_check) brings the counter back to the ledger."""
        return Reservation(request_id, 0, self.holds, self.backend, self.remaining_usd, held_as=request_id)


@dataclass(slots=True)
class RedisOutage:
    """What this process knows of Redis being unreachable while it is configured (LLMOPS_BUDGET_REDIS_FAILURE
    "database"), so the two kinds of counters never count from spend the other one took.

    `since`: when this process last found Redis unreachable after it answered (None while it answers). A database
    counter last written before then may lack what Redis counted since, so it is seeded from the ledger again.
    `settled_in_database`: the counters this process charged in the database meanwhile. Redis's own counters for them
    (kept by an AOF restart, or never lost) lack that spend, so each is seeded again from the ledger before this
    process next reserves against it in Redis.
    """

    since: datetime | None = None
    settled_in_database: dict[str, BudgetHold] = field(default_factory=dict)


_outage = RedisOutage()
os.register_at_fork(after_in_child=lambda: _outage.settled_in_database.clear())


def _remaining(holds: tuple[BudgetHold, ...], used_units: list[int | None]) -> Decimal | None:
    known = [hold.entry.limit_units - used for hold, used in zip(holds, used_units, strict=True) if used is not None]
    return units_to_usd(max(min(known), 0)) if known else None


def _use_database(exc: Exception | None) -> bool:
    policy = settings.LLMOPS_BUDGET_REDIS_FAILURE
    if exc is not None:
        logger.error("budget counters in Redis unreachable (%s); policy %s", exc, policy)
    return policy == REDIS_FAILURE_DATABASE


async def budget_reserve(
    *, budgets: list[BudgetEntry], amount: Decimal, request_id: str, now: datetime, customer: str = ""
) -> Reservation:
    """Reserve `amount` against every budget, or raise BudgetExceeded / BudgetUnavailable and reserve nothing.
    `customer`: the request's end customer, whose own counter a customer-scope budget holds it to."""
    holds = tuple(BudgetHold.of(entry, now=now, customer=customer) for entry in budgets)
    amount_units = usd_to_units(amount)
    if not holds:
        return Reservation(request_id, amount_units, holds, backend="none", remaining_usd=None)
    client = async_redis()
    if client is not None:
        held_as = f"{request_id}:{secrets.token_hex(4)}"
        try:
            if _outage.settled_in_database:
                await _reseed_after_outage(holds, now)
            reserved = await _redis_reserve(client, holds, amount_units, request_id, now, held_as)
        except (RedisError, asyncio.CancelledError) as exc:
            # The script may have run with its reply lost (Redis went away, or the caller did: a client that
            # disconnected): what this reserve may hold is released, once, when Redis answers.
            _release_unknown(Reservation(request_id, amount_units, holds, "redis", remaining_usd=None, held_as=held_as))
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not _use_database(exc):
                return _fail_closed(holds, amount_units, request_id)
            _outage.since = _outage.since or timezone.now()
        else:
            _outage.since = None
            return reserved
    reserving = asyncio.ensure_future(
        database_sync_to_async(_database_reserve)(holds, amount_units, now, stale_before=_outage.since)
    )
    try:
        used = await asyncio.shield(reserving)
    except asyncio.CancelledError:
        # The caller went away; the transaction in its thread goes on and, once it commits, is given back.
        reserving.add_done_callback(lambda done: _give_back_database_reserve(done, request_id, amount_units, holds))
        raise
    return Reservation(request_id, amount_units, holds, backend="database", remaining_usd=_remaining(holds, used))


def _give_back_database_reserve(reserving: asyncio.Future, request_id: str, amount_units: int, holds) -> None:
    if reserving.cancelled() or reserving.exception() is not None:
        return
    reservation = Reservation(request_id, amount_units, holds, backend="database", remaining_usd=None)
    run_in_background(reservation_settle(reservation, actual=Decimal(0)))


def _fail_closed(holds: tuple[BudgetHold, ...], amount_units: int, request_id: str) -> Reservation:
    if any(hold.entry.enforced for hold in holds):
        raise BudgetUnavailable("Budget counters are unavailable, so requests under an enforced budget are refused.")
    logger.warning("request %s passes notify-only budgets uncounted: Redis is unreachable", request_id)
    return Reservation(request_id, amount_units, holds, backend="none", remaining_usd=None)


async def _redis_reserve(client, holds, amount_units: int, request_id: str, now: datetime, held_as: str) -> Reservation:
    """Reserve in Redis; a counter that must be seeded first is seeded (by this process or another) and the
    reservation tried again, so nothing is admitted under a counter that does not know the period's spend."""
    arguments = [amount_units]
    for hold in holds:
        entry = hold.entry
        arguments += [entry.limit_units, 1 if entry.enforced else 0, hold.ttl_seconds(now), entry.version]
    arguments.append(held_as)
    keys = [hold.redis_key for hold in holds]
    deadline = time.monotonic() + SEED_WAIT_SECONDS
    while True:
        result = await RESERVE_SCRIPT.run(client, keys, arguments)
        if result[0] not in (NEEDS_SEED, SEEDING):
            break
        if result[0] == NEEDS_SEED:
            try:
                seeded = await database_sync_to_async(counter_seed)(hold=holds[result[1] - 1], now=now)
            except DatabaseError as exc:
                logger.error("budget counter cannot be seeded, the ledger is unreachable: %s", exc)
                raise BudgetUnavailable("Budget counters cannot be set from the ledger; try again shortly.") from exc
            if seeded is not None:
                continue
        if time.monotonic() > deadline:
            raise BudgetUnavailable("A budget counter is being rebuilt from the ledger; try again shortly.")
        await asyncio.sleep(SEED_POLL_SECONDS)
    if result[0] == REFUSED:
        raise _exceeded(holds[result[1] - 1], int(result[2]), int(result[3]), amount_units, now)
    used = [int(value) for value in result[1:]]
    return Reservation(
        request_id, amount_units, holds, backend="redis", remaining_usd=_remaining(holds, used), held_as=held_as
    )


def _exceeded(hold: BudgetHold, spent: int, reserved: int, requested: int, now: datetime) -> BudgetExceeded:
    """The refusal, noted for the budget's alert when spend is what refuses it: spend stops below the limit, so no
    settle would raise its top. A request over the whole limit by itself, or one that only others' reservations in
    flight keep out, says nothing about the budget being spent."""
    limit = hold.entry.limit_units
    if requested <= limit < spent + requested:
        refusal_alert_enqueue(entry=hold.entry, period_key=hold.window.key, spent_units=spent, customer=hold.customer)
    return BudgetExceeded(
        entry=hold.entry, window=hold.window, now=now, spent_units=spent, reserved_units=reserved,
        requested_units=requested, customer=hold.customer,
    )  # fmt: skip


async def _reseed_after_outage(holds: tuple[BudgetHold, ...], now: datetime) -> None:
    """Seed again from the ledger, now that Redis answers, each of these counters that this process charged in the
    database while it did not: Redis's spend for them is missing that. Taken off the list first, so a charge noted
    meanwhile puts it back for the next request, and put back when the seed fails."""
    for hold in holds:
        if _outage.settled_in_database.pop(hold.redis_key, None) is None:
            continue
        try:
            await database_sync_to_async(counter_seed)(hold=hold, now=now, force=True)
        except (RedisError, DatabaseError) as exc:
            _outage.settled_in_database[hold.redis_key] = hold
            if isinstance(exc, RedisError):
                raise
            logger.error("budget counter cannot be seeded again after Redis was away: %s", exc)
            raise BudgetUnavailable("Budget counters cannot be set from the ledger; try again shortly.") from exc
        logger.warning("budget %s counter seeded again: it was charged in the database while Redis was away",
                       hold.entry.budget_id)  # fmt: skip


def _database_reserve(holds, amount_units: int, now: datetime, *, stale_before: datetime | None = None) -> list[int]:
    amount = units_to_usd(amount_units)
    refused = None
    # A refusal leaves the transaction normally, so a counter seeded on the way is kept.
    with transaction.atomic():
        counters = database_counters_locked(holds, seed=True, stale_before=stale_before)
        used = []
        for hold in holds:
            counter = counters[hold.counter_key]
            spent, reserved = usd_to_units(counter.spent_usd), usd_to_units(counter.reserved_usd)
            if hold.entry.enforced and spent + reserved + amount_units > hold.entry.limit_units:
                refused = _exceeded(hold, spent, reserved, amount_units, now)
                break
            used.append(spent + reserved + amount_units)
        else:
            for counter in counters.values():
                counter.reserved_usd += amount
                counter.save(update_fields=["reserved_usd", "updated_at"])
    if refused is not None:
        raise refused
    return used


async def reservation_settle(
    reservation: Reservation, *, actual: Decimal, event: UsageEvent | None = None, served_model: str | None = None
) -> Decimal | None:
    """Replace the reservation by what was really spent (0 is fine); returns the tightest budget's remaining USD.

    Call it exactly once per reservation, also after an upstream failure or a client disconnect. With `event`, the
    request's ledger record is written in the same step (one Redis script with the ledger stream, or one database
    transaction with the counter rows), so a counter seeded from the ledger counts it exactly once. `served_model`:
    the model that served a request held to the budgets of a chain's models; another model's budget is released and
    not charged, as the ledger (which the counters are seeded from) does not count the request there.
    """
    if reservation.settled:
        raise RuntimeError(f"reservation {reservation.request_id} is already settled")
    reservation.settled = True
    actual_units = usd_to_units(actual)
    charges = [actual_units if hold.entry.spends_on(served_model) else 0 for hold in reservation.holds]
    # Shielded: a caller cancelled meanwhile (a client that hung up) must not take back half way the settle, the
    # request's ledger record or its alerts (the batcher drops the commands of a cancelled caller).
    return await asyncio.shield(_settle(reservation, charges, event))


async def budget_charge(
    *,
    holds: tuple[BudgetHold, ...],
    request_id: str,
    actual: Decimal,
    event: UsageEvent | None = None,
    served_model: str | None = None,
) -> Decimal | None:
    """Charge spend that nothing was reserved for (a merged batch line's budgets that did not hold it, a call whose
    cost is known only once it was made) to the holds' counters, as a settle of a reservation of nothing charges it:
    with `event`, its ledger row is written in the same step, so a counter seeded from the ledger counts it once."""
    backend = "redis" if async_redis() is not None else "database"
    reservation = Reservation(request_id, 0, holds, backend=backend if holds else "none", remaining_usd=None)
    return await reservation_settle(reservation, actual=actual, event=event, served_model=served_model)


async def _settle(reservation: Reservation, charges: list[int], event: UsageEvent | None) -> Decimal | None:
    holds = reservation.holds
    if reservation.backend == "none":
        if event is not None:
            await ledger_event_append(event=event)
        return reservation.remaining_usd
    if reservation.backend == "redis":
        after = await _redis_settle(reservation, charges, event)
        if after is None:
            return reservation.remaining_usd
    else:
        after = await database_sync_to_async(_database_settle)(holds, reservation.amount_units, charges, event)
        if async_redis() is not None:
            charged = [hold for hold, charge in zip(holds, charges, strict=True) if charge]
            _outage.settled_in_database.update((hold.redis_key, hold) for hold in charged)
    _note_thresholds(holds, after, charges)
    remaining = _remaining(holds, [None if spent < 0 else spent + reserved for spent, reserved in after])
    reservation.remaining_usd = remaining if remaining is not None else reservation.remaining_usd
    return reservation.remaining_usd


def _settle_call(
    reservation: Reservation, charges: list[int], event: UsageEvent | None, *, in_ledger: bool = False
) -> tuple[list, list]:
    """The keys and arguments of the settle script; the ledger stream among them when `event` is appended.
    `in_ledger`: the request's row is in the database already (a settle sent again once Redis answers)."""
    holds = reservation.holds
    keys = [hold.redis_key for hold in holds] + [hold.pending_key for hold in holds]
    keys += [STREAM_KEY] if event is not None else []
    arguments = [
        len(holds),
        reservation.amount_units,
        reservation.request_id,
        usage_event_encode(event) if event is not None else "",
        "1" if in_ledger else "0",
        reservation.held_as,
        *charges,
    ]
    return keys, arguments


async def _redis_settle(reservation: Reservation, charges: list[int], event: UsageEvent | None):
    appended = event if event is not None and ledger_streaming() else None
    keys, arguments = _settle_call(reservation, charges, appended)
    try:
        result = await SETTLE_SCRIPT.run(async_redis(), keys, arguments)
    except RedisError as exc:
        # The answer waits for nothing more: its ledger row goes to the database now, and the counters get their
        # share (the actual cost, the reservation released) once Redis answers again.
        logger.error("settling %s in Redis failed (%s); settling again once Redis answers", reservation.request_id, exc)
        if event is not None:
            await database_sync_to_async(usage_record_create)(event=event)
        run_in_background(_resettle(reservation, charges))
        return None
    if event is not None and appended is None:
        await ledger_event_append(event=event)
    return _settled(result, len(reservation.holds))


def _settled(result, n: int) -> list[tuple[int, int]]:
    """The settle script's reply: spent and reserved of each of the n counters after it."""
    return [(int(result[2 * i]), int(result[2 * i + 1])) for i in range(n)]


async def _resettle(
    reservation: Reservation,
    charges: list[int],
    *,
    done_note: str = "settled %s in Redis once it answered again",
    done_level: int = logging.WARNING,
) -> None:
    """Send a failed settle again (without its ledger event, which is in the database) until Redis answers, for up
    to RESETTLE_SECONDS. Only a counter that still notes the reservation releases it and gets the cost: one seeded
    since has read the row, and if the first attempt did reach Redis with only its reply lost, it has both already.
    The thresholds a charge crosses are noted here, as the settle would have: every later settle starts above them."""
    keys, arguments = _settle_call(reservation, charges, None, in_ledger=True)
    deadline = time.monotonic() + RESETTLE_SECONDS
    pause = RESETTLE_FIRST_PAUSE_SECONDS
    while True:
        await asyncio.sleep(pause)
        try:
            result = await SETTLE_SCRIPT.run(async_redis(), keys, arguments)
        except RedisError as exc:
            if time.monotonic() > deadline:
                logger.error(
                    "settling %s: Redis unreachable for %.0f s (%s); counters need a rebuild",
                    reservation.request_id, RESETTLE_SECONDS, exc,
                )  # fmt: skip
                return
            pause = min(pause * 2, RESETTLE_MAX_PAUSE_SECONDS)
            continue
        logger.log(done_level, done_note, reservation.request_id)
        if any(charges):
            _note_thresholds(reservation.holds, _settled(result, len(reservation.holds)), charges)
        return


# Releases of reserves that got no reply, waiting for Redis at once in a process. The first failures when Redis goes
# away are those whose script may have run; during an outage every later reserve fails before it reaches Redis.
UNKNOWN_RELEASES_MAX = 100
_unknown_releases: set[asyncio.Task] = set()
os.register_at_fork(after_in_child=_unknown_releases.clear)


def _release_unknown(reservation: Reservation) -> None:
    """Settle at nothing, once Redis answers, a reservation whose reserve got no reply: the counters release what
    they note under its hold, and nothing when the script never ran."""
    if len(_unknown_releases) >= UNKNOWN_RELEASES_MAX:
        logger.warning(
            "%s: %d releases already wait for Redis; what its reserve may hold stays until the counter expires",
            reservation.request_id, UNKNOWN_RELEASES_MAX,
        )  # fmt: skip
        return
    # Mostly a client that hung up during admission: routine, not a warning.
    note = "released in Redis what %s may have reserved without a reply"
    release = _resettle(reservation, [0] * len(reservation.holds), done_note=note, done_level=logging.INFO)
    task = asyncio.get_running_loop().create_task(release)
    _unknown_releases.add(task)
    task.add_done_callback(_unknown_releases.discard)


def _database_settle(holds, reserved_units: int, charges: list[int], event: UsageEvent | None) -> list[tuple[int, int]]:
    with transaction.atomic():
        counters = database_counters_locked(holds, seed=False)
        after = []
        for hold, charge in zip(holds, charges, strict=True):
            counter = counters[hold.counter_key]
            counter.reserved_usd = max(counter.reserved_usd - units_to_usd(reserved_units), Decimal(0))
            counter.spent_usd += units_to_usd(charge)
            counter.save(update_fields=["spent_usd", "reserved_usd", "updated_at"])
            after.append((usd_to_units(counter.spent_usd), usd_to_units(counter.reserved_usd)))
        if event is not None:
            usage_record_create(event=event)
    return after


def _note_thresholds(holds, after: list[tuple[int, int]], charges: list[int]) -> None:
    crossings = []
    for hold, (spent_after, _), charge in zip(holds, after, charges, strict=True):
        if spent_after < 0:
            continue  # no counter to judge by yet: the seed raises what the ledger has reached
        for threshold in crossed_thresholds(
            entry=hold.entry, spent_before=spent_after - charge, spent_after=spent_after
        ):
            crossings.append((hold.entry, hold.window.key, threshold, spent_after, hold.customer))
    if crossings:
        threshold_alerts_enqueue(crossings=crossings)
