"""Hard budget enforcement by reservation, with no configuration query on the request path.

Before the upstream call the worst-case cost is reserved against every applicable budget at
once (all must pass); afterwards the reservation is replaced by the actual cost. Counters live
in Redis, one hash per budget and period (`llmops:budget:<id>:<period key>`, fields `spent` and
`reserved` in units of 1e-10 USD), changed by one Lua script so replicas cannot overshoot.
Without Redis the same happens in BudgetCounter rows under row locks. When Redis is configured
but unreachable, LLMOPS_BUDGET_REDIS_FAILURE decides: "database" uses the rows, "fail_closed"
(the default) refuses requests that an enforced budget covers — never silently open.
"""

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from redis.exceptions import RedisError

from billing.budgets.index import UNITS_PER_USD, BudgetEntry
from billing.budgets.periods import BudgetWindow, budget_window
from billing.budgets.thresholds import crossed_thresholds, threshold_alerts_enqueue
from billing.models import BudgetAction, BudgetCounter
from llmops.db import database_sync_to_async
from llmops.redis import RedisScript, async_redis

logger = logging.getLogger(__name__)

REDIS_FAILURE_DATABASE = "database"
REDIS_FAILURE_FAIL_CLOSED = "fail_closed"
# Counters outlive their period long enough for late settles and the nightly ledger check.
COUNTER_GRACE = timedelta(days=2)

# KEYS: one counter hash per budget. ARGV[1]: amount; then per budget: limit, enforced (1/0), ttl seconds.
# Returns {1, used after...} when reserved, or {0, index of the budget that refused, its spent, its reserved}.
RESERVE_SCRIPT = RedisScript("""
local amount = tonumber(ARGV[1])
local used = {}
for i = 1, #KEYS do
  local counter = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  local spent, reserved = tonumber(counter[1]) or 0, tonumber(counter[2]) or 0
  used[i] = spent + reserved
  if ARGV[3 * i] == '1' and used[i] + amount > tonumber(ARGV[3 * i - 1]) then
    return {0, i, spent, reserved}
  end
end
local result = {1}
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('EXPIRE', KEYS[i], ARGV[3 * i + 1])
  result[i + 1] = used[i] + amount
end
return result
""")

# KEYS: the counters reserved against. ARGV[1]: the reservation to release; ARGV[2]: the actual cost.
# Returns spent and reserved of each counter after, flattened.
SETTLE_SCRIPT = RedisScript("""
local result = {}
for i = 1, #KEYS do
  local reserved = redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(ARGV[1]))
  if reserved < 0 then
    redis.call('HSET', KEYS[i], 'reserved', 0)
    reserved = 0
  end
  result[2 * i - 1] = redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2])
  result[2 * i] = reserved
end
return result
""")


class BudgetExceeded(Exception):
    """An enforced budget would go over its limit. Answer 429 budget_exceeded, or downgrade when `downgrade`.

    The amounts say why: `spent_usd` settled this period, `reserved_usd` held by requests in flight, and
    `remaining_usd` what is left of `limit_usd` after both; `requested_usd` is this request's worst case.
    """

    def __init__(
        self, *, entry: BudgetEntry, window: BudgetWindow, now: datetime, spent_units: int, reserved_units: int,
        requested_units: int,
    ):  # fmt: skip
        self.budget_id = entry.budget_id
        self.period_end = window.end
        self.retry_after_seconds = max(math.ceil((window.end - now).total_seconds()), 1)
        self.downgrade = entry.action == BudgetAction.DOWNGRADE
        self.limit_usd = entry.limit_usd
        self.spent_usd = units_to_usd(spent_units)
        self.reserved_usd = units_to_usd(reserved_units)
        self.remaining_usd = units_to_usd(max(entry.limit_units - spent_units - reserved_units, 0))
        self.requested_usd = units_to_usd(requested_units)
        budget = f"Budget {entry.budget_id} ({entry.scope}, {entry.period} {window.key}) of ${entry.limit_usd:f}"
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


@dataclass(frozen=True, slots=True)
class BudgetHold:
    entry: BudgetEntry
    window: BudgetWindow

    @property
    def redis_key(self) -> str:
        return f"llmops:budget:{self.entry.budget_id}:{self.window.key}"


@dataclass(slots=True)
class Reservation:
    request_id: str
    amount_units: int
    holds: tuple[BudgetHold, ...]
    backend: str  # "redis", "database", or "none" when nothing was counted
    remaining_usd: Decimal | None  # of the tightest budget; None when no budget applies
    settled: bool = False


def usd_to_units(amount: Decimal) -> int:
    return int((amount * UNITS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def units_to_usd(units: int) -> Decimal:
    return Decimal(units).scaleb(-10)


def _remaining(holds: tuple[BudgetHold, ...], used_units: list[int]) -> Decimal:
    tightest = min(hold.entry.limit_units - used for hold, used in zip(holds, used_units, strict=True))
    return units_to_usd(max(tightest, 0))


def _use_database(exc: Exception | None) -> bool:
    policy = settings.LLMOPS_BUDGET_REDIS_FAILURE
    if exc is not None:
        logger.error("budget counters in Redis unreachable (%s); policy %s", exc, policy)
    return policy == REDIS_FAILURE_DATABASE


async def budget_reserve(*, budgets: list[BudgetEntry], amount: Decimal, request_id: str, now: datetime) -> Reservation:
    """Reserve `amount` against every budget, or raise BudgetExceeded / BudgetUnavailable and reserve nothing."""
    holds = tuple(
        BudgetHold(entry=entry, window=budget_window(period=entry.period, zone=entry.zone, now=now))
        for entry in budgets
    )
    amount_units = usd_to_units(amount)
    if not holds:
        return Reservation(request_id, amount_units, holds, backend="none", remaining_usd=None)
    client = async_redis()
    if client is not None:
        try:
            return await _redis_reserve(client, holds, amount_units, request_id, now)
        except RedisError as exc:
            if not _use_database(exc):
                return _fail_closed(holds, amount_units, request_id)
    used = await database_sync_to_async(_database_reserve)(holds, amount_units, now)
    return Reservation(request_id, amount_units, holds, backend="database", remaining_usd=_remaining(holds, used))


def _fail_closed(holds: tuple[BudgetHold, ...], amount_units: int, request_id: str) -> Reservation:
    if any(hold.entry.enforced for hold in holds):
        raise BudgetUnavailable("Budget counters are unavailable, so requests under an enforced budget are refused.")
    logger.warning("request %s passes notify-only budgets uncounted: Redis is unreachable", request_id)
    return Reservation(request_id, amount_units, holds, backend="none", remaining_usd=None)


async def _redis_reserve(client, holds, amount_units: int, request_id: str, now: datetime) -> Reservation:
    arguments = [amount_units]
    for hold in holds:
        ttl = int((hold.window.end + COUNTER_GRACE - now).total_seconds())
        arguments += [hold.entry.limit_units, 1 if hold.entry.enforced else 0, max(ttl, 1)]
    result = await RESERVE_SCRIPT.run(client, [hold.redis_key for hold in holds], arguments)
    if result[0] == 0:
        refusing = holds[result[1] - 1]
        _raise_exceeded(
            refusing, spent_units=int(result[2]), reserved_units=int(result[3]), amount_units=amount_units, now=now
        )
    used = [int(value) for value in result[1:]]
    return Reservation(request_id, amount_units, holds, backend="redis", remaining_usd=_remaining(holds, used))


def _raise_exceeded(hold: BudgetHold, *, spent_units: int, reserved_units: int, amount_units: int, now: datetime):
    # A refused budget is at its limit even though its settled spend may stay just under it: say so once.
    if 100 in hold.entry.thresholds:
        threshold_alerts_enqueue(crossings=[(hold.entry, hold.window.key, 100, spent_units + reserved_units)])
    raise BudgetExceeded(
        entry=hold.entry,
        window=hold.window,
        now=now,
        spent_units=spent_units,
        reserved_units=reserved_units,
        requested_units=amount_units,
    )


def _counter_filter(holds) -> Q:
    query = Q(pk__in=[])
    for hold in holds:
        query |= Q(budget_id=hold.entry.budget_id, period_key=hold.window.key)
    return query


def _locked_counters(holds) -> dict[tuple[int, str], BudgetCounter]:
    BudgetCounter.objects.bulk_create(
        [BudgetCounter(budget_id=hold.entry.budget_id, period_key=hold.window.key) for hold in holds],
        ignore_conflicts=True,
    )
    # Locked in budget order, so two requests over the same budgets cannot deadlock.
    counters = BudgetCounter.objects.select_for_update().filter(_counter_filter(holds)).order_by("budget_id")
    return {(counter.budget_id, counter.period_key): counter for counter in counters}


def _database_reserve(holds, amount_units: int, now: datetime) -> list[int]:
    amount = units_to_usd(amount_units)
    with transaction.atomic():
        counters = _locked_counters(holds)
        used = []
        for hold in holds:
            counter = counters[hold.entry.budget_id, hold.window.key]
            spent_units, reserved_units = usd_to_units(counter.spent_usd), usd_to_units(counter.reserved_usd)
            used_units = spent_units + reserved_units
            if hold.entry.enforced and used_units + amount_units > hold.entry.limit_units:
                _raise_exceeded(
                    hold, spent_units=spent_units, reserved_units=reserved_units, amount_units=amount_units, now=now
                )
            used.append(used_units + amount_units)
        for counter in counters.values():
            counter.reserved_usd += amount
            counter.save(update_fields=["reserved_usd", "updated_at"])
    return used


async def reservation_settle(reservation: Reservation, *, actual: Decimal) -> Decimal | None:
    """Replace the reservation by what was really spent (0 is fine); returns the tightest budget's remaining USD.

    Call it exactly once per reservation, also after an upstream failure or a client disconnect.
    """
    if reservation.settled:
        raise RuntimeError(f"reservation {reservation.request_id} is already settled")
    reservation.settled = True
    actual_units = usd_to_units(actual)
    holds = reservation.holds
    if reservation.backend == "none":
        return reservation.remaining_usd
    if reservation.backend == "redis":
        client = async_redis()
        try:
            result = await SETTLE_SCRIPT.run(
                client, [hold.redis_key for hold in holds], [reservation.amount_units, actual_units]
            )
        except RedisError as exc:
            # The ledger row still has the cost; budget_counters_rebuild brings the counter back in line.
            logger.error("settling %s in Redis failed (%s); counters need a rebuild", reservation.request_id, exc)
            return reservation.remaining_usd
        after = [(int(result[2 * i]), int(result[2 * i + 1])) for i in range(len(holds))]
    else:
        after = await database_sync_to_async(_database_settle)(holds, reservation.amount_units, actual_units)
    _note_thresholds(holds, after, actual_units)
    reservation.remaining_usd = _remaining(holds, [spent + reserved for spent, reserved in after])
    return reservation.remaining_usd


def _database_settle(holds, reserved_units: int, actual_units: int) -> list[tuple[int, int]]:
    with transaction.atomic():
        counters = _locked_counters(holds)
        after = []
        for hold in holds:
            counter = counters[hold.entry.budget_id, hold.window.key]
            counter.reserved_usd = max(counter.reserved_usd - units_to_usd(reserved_units), Decimal(0))
            counter.spent_usd += units_to_usd(actual_units)
            counter.save(update_fields=["spent_usd", "reserved_usd", "updated_at"])
            after.append((usd_to_units(counter.spent_usd), usd_to_units(counter.reserved_usd)))
    return after


def _note_thresholds(holds, after: list[tuple[int, int]], actual_units: int) -> None:
    crossings = []
    for hold, (spent_after, _) in zip(holds, after, strict=True):
        for threshold in crossed_thresholds(
            entry=hold.entry, spent_before=spent_after - actual_units, spent_after=spent_after
        ):
            crossings.append((hold.entry, hold.window.key, threshold, spent_after))
    if crossings:
        threshold_alerts_enqueue(crossings=crossings)
