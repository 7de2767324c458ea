"""Budget counters that start from the truth: the ledger's spend in the period plus the reservations in flight.

A counter in Redis is one hash per budget and period (``llmops:budget:<id>:<period key>``; a customer-scope budget has
one per customer, ``llmops:budget:<id>:c:<digest of the customer>:<period key>``, seeded from that customer's rows
and expiring with its period like every counter, so any number of customers leaves no state behind) with ``spent`` and
``reserved`` in units of 1e-10 USD, the budget ``version`` it was seeded for, and ``held:<held_as>``, the amount
each reservation in flight holds. The reserve script admits nothing under a counter that is missing (a new budget, a
Redis flush, a failover, an eviction) or seeded for an older version of the budget (a changed limit, scope or
period): the gateway seeds it first, with one ledger query, and tries again. Seeding is rare, so its cost does not
touch the hot path.

Seeding, exactly once per counter even with many processes racing (the mark script lets one seeder in at a time):

1. Mark the counter "seeding" and note the last entry of the ledger stream (the boundary). Reservations wait; the
   reservations already in flight stay counted in ``reserved`` when the counter existed. From now on a settle adds
   its actual cost to a pending hash (request id → cost) instead of ``spent``.
2. Read the stream's backlog up to the boundary (records appended, not yet drained into Postgres), then, in one
   REPEATABLE READ snapshot, the ledger's sum and the rows of any request id seen in the backlog or pending:
   those are subtracted, so a record both drained and still in the stream, or both in Postgres and pending,
   counts once. In stream mode a settle and its ledger append are one Redis script, so every request settled
   before the mark is in the backlog or in Postgres, and every request settled after it is pending.
3. Finalize: ``spent`` = that sum + everything pending, and the counter admits again.

After a flush (or a restart of a Redis without AOF) the reservations of requests in flight are gone with the
counter; each settles its actual cost (counted once: it is in the ledger or pending), but until then the new
counter does not hold their worst case. A Redis with AOF restarts with its counters and reservations; a settle that
meets it down is sent again once it answers (billing.budgets.reservations), its ledger row written to the database,
and a reserve whose reply never came is settled at nothing the same way (what the request holds, if anything).
A change of scope keeps the counter (and the reservations in flight under the old scope, which is cautious). A change
of the tenant's time zone moves the period's window: tenants.services.tenant_update bumps the version of each of the
tenant's budgets in the same transaction, so a counter whose key reads the same in the new zone (the same local date)
is seeded again for the new window, reservations in flight kept, like any other change of the budget. A change of
period, or of the zone where the key changes with it, starts another counter, and requests in flight under the old
one settle there: the new one counts them at the nightly check.
With LLMOPS_LEDGER_MODE=direct a request that settles in the instant of a seed can be missed; the nightly check
(``budget_counters_check``) seeds again every counter that disagrees with the ledger.

The database backend (BudgetCounter rows, no Redis) seeds under the counter's row lock, and writes the ledger row in
the settle's transaction, which makes it exact the same way.
"""

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import QuerySet, Sum
from redis.exceptions import RedisError

from billing.budgets.index import BudgetEntry, customer_digest, units_to_usd, usd_to_units
from billing.budgets.periods import BudgetWindow, budget_window
from billing.budgets.thresholds import threshold_alerts_enqueue
from billing.ledger.costs import format_cost
from billing.ledger.stream import EVENT_FIELD, STREAM_KEY, ledger_streaming, usage_event_decode
from billing.models import PRODUCT_ROWS, BudgetCounter, BudgetScope, UsageKind, UsageRecord
from core.redis import RedisScript, sync_redis

logger = logging.getLogger(__name__)

# Counters outlive their period long enough for late settles and the nightly ledger check.
COUNTER_GRACE = timedelta(days=2)
# How long one seeder may hold a counter before another takes over (a seeder that died).
SEED_LEASE_MS = 10_000
BACKLOG_PAGE = 1000
ID_CHUNK = 5000

# Replies of the reserve script.
REFUSED, RESERVED, NEEDS_SEED, SEEDING = 0, 1, 2, 3

# KEYS: one counter per budget. ARGV[1]: amount; then per budget: limit, enforced (1/0), ttl seconds, version; last,
# the reservation's hold (the request id and a token of this reserve), under which each counter notes what it holds
# (``held:<held_as>``), so that it is released exactly once however often the settle is sent. Returns {1, used
# after...} when reserved; {0, index that refused, spent, reserved} when refused; {2, index} when that counter must be
# seeded first (missing, or seeded for an older version, or its seeder's lease ran out); {3, index} while another
# process seeds it.
RESERVE_SCRIPT = RedisScript("""
local amount = tonumber(ARGV[1])
local held = 'held:' .. ARGV[#ARGV]
local used = {}
for i = 1, #KEYS do
  local counter = redis.call('HMGET', KEYS[i], 'spent', 'reserved', 'version', 'seeding', 'seed_until')
  if counter[4] then
    local time = redis.call('TIME')
    if tonumber(counter[5]) > tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) then
      return {3, i}
    end
    return {2, i}
  end
  if not counter[1] or (tonumber(counter[3]) or -1) < tonumber(ARGV[4 * i + 1]) then
    return {2, i}
  end
  local spent, reserved = tonumber(counter[1]), tonumber(counter[2]) or 0
  used[i] = spent + reserved
  if ARGV[4 * i - 1] == '1' and used[i] + amount > tonumber(ARGV[4 * i - 2]) then
    return {0, i, spent, reserved}
  end
end
local result = {1}
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('HINCRBY', KEYS[i], held, amount)
  redis.call('EXPIRE', KEYS[i], ARGV[4 * i])
  result[i + 1] = used[i] + amount
end
return result
""")

# KEYS: the n counters reserved against, their n pending hashes, then the ledger stream when an event is appended.
# ARGV: n, the reservation to release, the request id, the ledger event ('' for none), '1' when the request's row is
# in the database ledger already (a settle sent again after Redis was away), the reservation's hold, then the actual
# cost each counter is charged (0 for a model budget of a chain's model that did not serve).
# A counter releases only what it notes under the hold (``held:<held_as>``), once: a counter seeded anew since the
# reservation holds nothing of it, and a settle sent again after its first reached Redis finds nothing left. A row
# already in the ledger is added only where the hold is still noted, for the same two reasons (a counter seeded since
# has read the row; a settle that reached Redis added it).
# Returns spent and reserved of each counter after, flattened; spent is -1 where it is not known yet (no counter,
# or one being seeded: the cost is then pending, or already in the ledger the seed reads).
SETTLE_SCRIPT = RedisScript("""
local n = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local held = 'held:' .. ARGV[6]
local in_ledger = ARGV[5] == '1'
local result = {}
for i = 1, n do
  local actual = tonumber(ARGV[6 + i])
  local spent, reserved = -1, 0
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local state = redis.call('HMGET', KEYS[i], 'seeding', held, 'reserved')
    local holding = tonumber(state[2])
    reserved = tonumber(state[3]) or 0
    if holding then
      local release = math.min(holding, amount)
      if holding > release then
        redis.call('HINCRBY', KEYS[i], held, -release)
      else
        redis.call('HDEL', KEYS[i], held)
      end
      reserved = redis.call('HINCRBY', KEYS[i], 'reserved', -release)
      if reserved < 0 then
        redis.call('HSET', KEYS[i], 'reserved', 0)
        reserved = 0
      end
    end
    if state[1] then
      if actual > 0 and not in_ledger then
        redis.call('HSET', KEYS[n + i], ARGV[3], actual)
        redis.call('PEXPIRE', KEYS[n + i], 600000)
      end
    elseif holding or not in_ledger then
      spent = redis.call('HINCRBY', KEYS[i], 'spent', actual)
    end
  end
  result[2 * i - 1] = spent
  result[2 * i] = reserved
end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2 * n + 1], '*', 'event', ARGV[4])
end
return result
""")

# KEYS: counter, its pending hash, the ledger stream. ARGV: version, seeder token, epoch for a new counter, ttl
# seconds, force (1/0), lease ms. Returns {1, boundary stream id} when this caller seeds; {0} when the counter is
# seeded for this version already; {-1} while another seeder holds it. The epoch is for gateways of the release before
# ``held:<held_as>``, which settle by it: during a rolling deploy they reserve and settle under new counters too.
MARK_SCRIPT = """
local counter = redis.call('HMGET', KEYS[1], 'spent', 'version', 'seeding', 'seed_until')
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if counter[3] and tonumber(counter[4]) > now_ms then
  return {-1}
end
if counter[1] and not counter[3] and ARGV[5] ~= '1' and (tonumber(counter[2]) or -1) >= tonumber(ARGV[1]) then
  return {0}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'reserved', 0, 'epoch', ARGV[3])
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'seeding', ARGV[2], 'seed_until', now_ms + tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('DEL', KEYS[2])
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if #last > 0 then
  return {1, last[1][1]}
end
return {1, '0-0'}
"""

# KEYS: counter, its pending hash. ARGV: seeder token, the ledger's spend before the mark. Returns spent, or -1 when
# the seeder lost its lease to another.
FINALIZE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'seeding') ~= ARGV[1] then
  return -1
end
redis.call('HSET', KEYS[1], 'spent', ARGV[2])
local pending = redis.call('HVALS', KEYS[2])
for _, cost in ipairs(pending) do
  redis.call('HINCRBY', KEYS[1], 'spent', cost)
end
redis.call('HDEL', KEYS[1], 'seeding', 'seed_until')
redis.call('DEL', KEYS[2])
return tonumber(redis.call('HGET', KEYS[1], 'spent'))
"""

# KEYS: counter. ARGV: seeder token. A seeder that failed lets go at once instead of holding its lease.
RELEASE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'seeding') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'seeding', 'seed_until')
end
return 0
"""


@dataclass(frozen=True, slots=True)
class BudgetHold:
    """One budget's counter a request is held to: the budget's in the period holding it, and for a customer-scope
    budget, the one of the request's customer."""

    entry: BudgetEntry
    window: BudgetWindow
    customer: str = ""

    @classmethod
    def of(cls, entry: BudgetEntry, *, now: datetime, customer: str = "") -> "BudgetHold":
        window = budget_window(period=entry.period, zone=entry.zone, now=now)
        return cls(entry=entry, window=window, customer=customer if entry.per_customer else "")

    @property
    def redis_key(self) -> str:
        if self.entry.per_customer:
            return f"llmops:budget:{self.entry.budget_id}:c:{customer_digest(self.customer)}:{self.window.key}"
        return f"llmops:budget:{self.entry.budget_id}:{self.window.key}"

    @property
    def counter_key(self) -> tuple[int, str, str]:
        """The database counter's identity: budget, customer, period."""
        return self.entry.budget_id, self.customer, self.window.key

    @property
    def pending_key(self) -> str:
        return f"{self.redis_key}:pending"

    def ttl_seconds(self, now: datetime) -> int:
        return max(int((self.window.end + COUNTER_GRACE - now).total_seconds()), 1)


def budget_ledger_records(*, entry: BudgetEntry, window: BudgetWindow, customer: str = "") -> QuerySet[UsageRecord]:
    """The ledger rows that are the budget's spend in the window (the same test as _counts), for a customer-scope
    budget the customer's. Shadow evaluation's calls are not: its own budget pays for them."""
    records = UsageRecord.objects.for_tenant(entry.tenant_id).filter(
        PRODUCT_ROWS, created_at__gte=window.start, created_at__lt=window.end
    )
    if entry.per_customer:
        records = records.filter(customer=customer)
    elif entry.scope == BudgetScope.TEAM:
        records = records.filter(team_id=entry.team_id)
    elif entry.scope == BudgetScope.KEY:
        records = records.filter(api_key_id=entry.key_id)
    elif entry.scope == BudgetScope.TENANT_MODEL:
        records = records.filter(served_model=entry.model_name)
    return records


def hold_ledger_records(hold: BudgetHold) -> QuerySet[UsageRecord]:
    return budget_ledger_records(entry=hold.entry, window=hold.window, customer=hold.customer)


def records_cost(records: QuerySet[UsageRecord]) -> Decimal:
    return records.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)


def counter_reserved(*, hold: BudgetHold) -> Decimal:
    """What the requests in flight hold against the budget now (0 when the counter cannot be read)."""
    client = sync_redis()
    if client is None:
        counters = BudgetCounter.objects.for_tenant(hold.entry.tenant_id)
        counter = counters.filter(
            budget_id=hold.entry.budget_id, customer=hold.customer, period_key=hold.window.key
        ).first()
        return counter.reserved_usd if counter else Decimal(0)
    try:
        return units_to_usd(int(client.hget(hold.redis_key, "reserved") or 0))
    except RedisError:
        logger.warning("budget %s: reserved amount unreadable, Redis unreachable", hold.entry.budget_id)
        return Decimal(0)


def counter_seed(*, hold: BudgetHold, now: datetime, force: bool = False) -> Decimal | None:
    """Seed the hold's Redis counter from the ledger unless it is seeded for this version (always, with `force`).

    Returns the spend it was set to; None when another process is seeding it (wait and try again), or when it was
    seeded already.
    """
    client = sync_redis()
    marked = client.register_script(MARK_SCRIPT)(
        keys=[hold.redis_key, hold.pending_key, STREAM_KEY],
        args=[
            hold.entry.version,
            token := secrets.token_hex(8),
            secrets.token_hex(8),
            hold.ttl_seconds(now),
            1 if force else 0,
            SEED_LEASE_MS,
        ],
    )
    if marked[0] != 1:
        return None
    boundary = marked[1].decode() if isinstance(marked[1], bytes) else marked[1]
    try:
        ledger_units = usd_to_units(_ledger_spend_before_mark(hold, client=client, boundary=boundary))
    except Exception:
        client.register_script(RELEASE_SCRIPT)(keys=[hold.redis_key], args=[token])
        raise
    spent = client.register_script(FINALIZE_SCRIPT)(keys=[hold.redis_key, hold.pending_key], args=[token, ledger_units])
    if spent < 0:
        return None
    seeded = units_to_usd(spent)
    logger.log(
        _seed_log_level(hold),
        "budget %s counter for %s seeded: %s USD",
        hold.entry.budget_id,
        hold.window.key,
        format_cost(seeded),
    )
    _alert_seeded_thresholds(hold, spent)
    return seeded


def _seed_log_level(hold: BudgetHold) -> int:
    """A customer's counter is seeded on each customer's first request of a period: routine, so not logged at INFO."""
    return logging.DEBUG if hold.entry.per_customer else logging.INFO


def _backlog_costs(client, hold: BudgetHold, *, boundary: str) -> dict[str, Decimal]:
    """Cost by request id of the budget's records in the ledger stream up to the boundary, not drained yet."""
    costs: dict[str, Decimal] = {}
    start = "-"
    while True:
        entries = client.xrange(STREAM_KEY, min=start, max=boundary, count=BACKLOG_PAGE)
        for _entry_id, fields in entries:
            raw = fields.get(EVENT_FIELD)
            if raw is None:
                continue
            try:
                event = usage_event_decode(raw)
            except (ValueError, TypeError, KeyError):
                continue  # the drainer sends it to the dead letters; it never becomes a row
            if _counts(hold, event):
                costs[event.request_id] = event.cost_usd
        if len(entries) < BACKLOG_PAGE:
            return costs
        start = "(" + entries[-1][0].decode()


def _counts(hold: BudgetHold, event) -> bool:
    if event.kind == UsageKind.EVALUATION:
        return False
    if hold.entry.per_customer and event.customer != hold.customer:
        return False
    return hold.window.start <= event.created_at < hold.window.end and hold.entry.counts(
        tenant_id=event.tenant_id,
        team_id=event.team_id,
        key_id=event.api_key_id,
        served_model=event.served_model,
        customer=event.customer,
    )


def ledger_spend(*, hold: BudgetHold) -> Decimal:
    """The hold's spend in the ledger as it stands: Postgres rows plus the stream's backlog, each record once."""
    client = sync_redis()
    if client is None:
        return records_cost(hold_ledger_records(hold))
    return _ledger_spend_before_mark(hold, client=client, boundary="+")


def _ledger_spend_before_mark(hold: BudgetHold, *, client, boundary: str) -> Decimal:
    backlog = _backlog_costs(client, hold, boundary=boundary) if ledger_streaming() else {}
    records = hold_ledger_records(hold)
    # One snapshot for the sum and the duplicates (inside a caller's transaction, that transaction's snapshot).
    own_snapshot = connection.vendor == "postgresql" and not connection.in_atomic_block
    with transaction.atomic():
        if own_snapshot:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        total = records_cost(records)
        # Read after the snapshot: any pending request whose row is in the snapshot is listed by now.
        seen = [*backlog, *(request_id.decode() for request_id in client.hkeys(hold.pending_key))]
        chunks = (seen[at : at + ID_CHUNK] for at in range(0, len(seen), ID_CHUNK))
        counted_twice = sum((records_cost(records.filter(request_id__in=chunk)) for chunk in chunks), Decimal(0))
    return total - counted_twice + sum(backlog.values(), Decimal(0))


def _alert_seeded_thresholds(hold: BudgetHold, spent_units: int) -> None:
    """A seeded counter can start past thresholds no settle will cross again: raise them (once each, as ever)."""
    limit = hold.entry.limit_units
    reached = [threshold for threshold in hold.entry.thresholds if threshold * limit <= spent_units * 100]
    if reached:
        threshold_alerts_enqueue(
            crossings=[(hold.entry, hold.window.key, t, spent_units, hold.customer) for t in reached]
        )


def database_counters_locked(
    holds, *, seed: bool, stale_before: datetime | None = None
) -> dict[tuple[int, str, str], BudgetCounter]:
    """The holds' BudgetCounter rows, locked (in budget order, so two requests cannot deadlock). With `seed`, a row
    that is new, seeded for an older version of its budget, or last written before `stale_before` (Redis counted the
    budget since) is set from the ledger first, reservations kept."""
    BudgetCounter.objects.bulk_create(
        [
            BudgetCounter(budget_id=hold.entry.budget_id, customer=hold.customer, period_key=hold.window.key)
            for hold in holds
        ],
        ignore_conflicts=True,
    )
    query = BudgetCounter.objects.none()
    for hold in holds:
        query |= BudgetCounter.objects.for_tenant(hold.entry.tenant_id).filter(
            budget_id=hold.entry.budget_id, customer=hold.customer, period_key=hold.window.key
        )
    # Locks the counters only, not the budgets their scope joins.
    counters = {
        (c.budget_id, c.customer, c.period_key): c
        for c in query.select_for_update(of=("self",)).order_by("budget_id", "customer")
    }
    if seed:
        for hold in holds:
            counter = counters[hold.counter_key]
            stale = stale_before is not None and counter.updated_at < stale_before
            if counter.version < hold.entry.version or stale:
                database_counter_seed(hold=hold, counter=counter)
    return counters


def database_counter_seed(*, hold: BudgetHold, counter: BudgetCounter) -> Decimal:
    """Under the row lock: settles write their ledger row in the same transaction, so the sum is exact."""
    counter.spent_usd = records_cost(hold_ledger_records(hold))
    counter.version = hold.entry.version
    counter.save(update_fields=["spent_usd", "version", "updated_at"])
    spent = format_cost(counter.spent_usd)
    logger.log(
        _seed_log_level(hold),
        "budget %s counter row for %s seeded: %s USD",
        hold.entry.budget_id,
        hold.window.key,
        spent,
    )
    transaction.on_commit(lambda: _alert_seeded_thresholds(hold, usd_to_units(counter.spent_usd)))
    return counter.spent_usd
