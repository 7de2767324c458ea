"""Creating, changing and repairing budgets. The admin, the API and `manage.py budget_set` all come here."""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from billing.budgets.counters import (
    BudgetHold,
    counter_seed,
    database_counter_seed,
    database_counters_locked,
    ledger_spend,
)
from billing.budgets.index import UNITS_PER_USD, budget_entry, build_budget_index, units_to_usd, usd_to_units
from billing.budgets.periods import BudgetWindow
from billing.budgets.selectors import budget_current_window
from billing.budgets.thresholds import threshold_alert_raise_again
from billing.models import (
    CUSTOMER_MAX_LENGTH,
    PRODUCT_ROWS,
    AlertChannel,
    Budget,
    BudgetAction,
    BudgetCounter,
    BudgetPeriod,
    BudgetScope,
    UsageRecord,
)
from core.redis import sync_redis
from routing.models import Model, ModelKind
from tenants.models import ApiKey, Team, Tenant

logger = logging.getLogger(__name__)

BUDGET_FIELDS = (
    "scope",
    "team",
    "api_key",
    "model_name",
    "customer",
    "period",
    "limit_usd",
    "thresholds",
    "action",
    "is_active",
)


def budget_validate(
    *,
    tenant: Tenant,
    scope: str,
    team: Team | None,
    api_key: ApiKey | None,
    model_name: str,
    period: str,
    limit_usd: Decimal,
    thresholds: list[int],
    action: str,
    customer: str = "",
) -> None:
    """Refuse a budget that cannot mean anything, with one message per field."""
    errors: dict[str, str] = {}
    if scope not in BudgetScope.values:
        errors["scope"] = f"Scope must be one of {', '.join(BudgetScope.values)}."
    if period not in BudgetPeriod.values:
        errors["period"] = f"Period must be one of {', '.join(BudgetPeriod.values)}."
    if action not in BudgetAction.values:
        errors["action"] = f"Action must be one of {', '.join(BudgetAction.values)}."
    # NaN and Infinity parse as Decimals, and NaN cannot even be compared.
    if limit_usd is None or not limit_usd.is_finite() or limit_usd <= 0:
        errors["limit_usd"] = "The limit must be more than 0 USD."
    elif -limit_usd.as_tuple().exponent > 10 or limit_usd * UNITS_PER_USD >= 10**20:
        errors["limit_usd"] = "The limit must have at most 10 decimal places and fewer than 10 digits before them."
    thresholds_error = _thresholds_error(thresholds)
    if thresholds_error:
        errors["thresholds"] = thresholds_error
    wanted = {BudgetScope.TEAM: "team", BudgetScope.KEY: "api_key", BudgetScope.TENANT_MODEL: "model_name"}
    targets = {"team": team, "api_key": api_key, "model_name": model_name}
    for field, value in targets.items():
        if wanted.get(scope) == field and not value:
            errors[field] = f"A {scope} budget needs a {field.replace('_', ' ')}."
        elif wanted.get(scope) != field and value:
            errors[field] = f"A {scope} budget takes no {field.replace('_', ' ')}."
    if customer and scope != BudgetScope.CUSTOMER:
        errors["customer"] = f"A {scope} budget takes no customer."
    elif customer and (
        len(customer) > CUSTOMER_MAX_LENGTH or not customer.isprintable() or customer != customer.strip()
    ):
        errors["customer"] = (
            f"A customer id is at most {CUSTOMER_MAX_LENGTH} printable characters, without surrounding spaces."
        )
    if team is not None and team.tenant_id != tenant.pk:
        errors["team"] = "No such team in this tenant."
    if api_key is not None and api_key.tenant_id != tenant.pk:
        errors["api_key"] = "No such API key in this tenant."
    if action == BudgetAction.DOWNGRADE and "action" not in errors and not _has_cheaper_route(tenant, model_name):
        errors["action"] = "Downgrade needs a cheaper route: the tenant may use no model cheaper than " + (
            f"'{model_name}'." if model_name else "its dearest one."
        )
    if errors:
        raise ValidationError(errors)


def _has_cheaper_route(tenant: Tenant, model_name: str) -> bool:
    """Whether the tenant may use a chat model with lower prices than the budget's model (or than its dearest chat
    model): a request is downgraded to a chat model, never to an embedding one."""
    prices = {
        model.name: (model.input_price_per_million + model.output_price_per_million)
        for model in Model.objects.filter(allowed_for__tenant=tenant, is_active=True, kind=ModelKind.CHAT)
        .with_prices_in_force()
        .filter(price_version_id__isnull=False)
    }
    if not prices:
        return False
    ceiling = prices.get(model_name) if model_name else max(prices.values())
    return ceiling is not None and any(price < ceiling for price in prices.values())


def _thresholds_error(thresholds) -> str:
    if not isinstance(thresholds, list | tuple) or not all(
        isinstance(value, int) and not isinstance(value, bool) for value in thresholds
    ):
        return "Thresholds must be a list of whole percentages, e.g. 50, 80, 100."
    if any(value <= 0 or value > 100 for value in thresholds):
        return "Each threshold must be a percentage from 1 to 100."
    if any(later <= earlier for earlier, later in pairwise(thresholds)):
        return "Thresholds must be in increasing order, each once."
    return ""


@transaction.atomic
def budget_create(
    *,
    tenant: Tenant,
    limit_usd: Decimal,
    period: str = BudgetPeriod.MONTH,
    scope: str = BudgetScope.TENANT,
    team: Team | None = None,
    api_key: ApiKey | None = None,
    model_name: str = "",
    customer: str = "",
    thresholds: list[int] | None = None,
    action: str = BudgetAction.BLOCK,
    is_active: bool = True,
    channels: list[AlertChannel] | None = None,
) -> Budget:
    budget = Budget(tenant=tenant, limit_usd=limit_usd, period=period, scope=scope, team=team, api_key=api_key)
    budget.model_name, budget.customer, budget.action, budget.is_active = model_name, customer, action, is_active
    budget.thresholds = list(thresholds) if thresholds is not None else budget.thresholds
    _validate_instance(budget)
    budget.save()
    if channels is not None:
        budget_channels_set(budget=budget, channels=channels)
    return budget


@transaction.atomic
def budget_update(*, budget: Budget, channels: list[AlertChannel] | None = None, **changes) -> Budget:
    unknown = set(changes) - set(BUDGET_FIELDS)
    if unknown:
        raise TypeError(f"budget_update() got unknown fields {sorted(unknown)}")
    for field, value in changes.items():
        setattr(budget, field, list(value) if field == "thresholds" else value)
    _validate_instance(budget)
    budget.save()
    if channels is not None:
        budget_channels_set(budget=budget, channels=channels)
    return budget


def budget_channels_set(*, budget: Budget, channels: list[AlertChannel]) -> None:
    if any(channel.tenant_id != budget.tenant_id for channel in channels):
        raise ValidationError({"channels": "No such alert channel in this tenant."})
    budget.channels.set(channels)


def budget_set(
    *,
    tenant: Tenant,
    period: str,
    limit_usd: Decimal,
    team: Team | None = None,
    api_key: ApiKey | None = None,
    model_name: str = "",
    per_customer: bool = False,
    customer: str = "",
    action: str | None = None,
    thresholds: list[int] | None = None,
) -> tuple[Budget, bool]:
    """Create the budget for this target and period, or change the one there is. Returns it and whether it is new.
    `per_customer`: each end customer's limit (`customer`: one customer's own instead)."""
    scope = (
        BudgetScope.CUSTOMER
        if per_customer or customer
        else BudgetScope.TEAM
        if team
        else BudgetScope.KEY
        if api_key
        else BudgetScope.TENANT_MODEL
        if model_name
        else BudgetScope.TENANT
    )
    target = {
        "scope": scope,
        "team": team,
        "api_key": api_key,
        "model_name": model_name,
        "customer": customer,
        "period": period,
    }
    existing = Budget.objects.for_tenant(tenant).filter(**target).order_by("pk").first()
    # What is left out keeps its value, or takes budget_create's default.
    changes = {"limit_usd": limit_usd}
    if action is not None:
        changes["action"] = action
    if thresholds is not None:
        changes["thresholds"] = thresholds
    if existing is None:
        return budget_create(tenant=tenant, **target, **changes), True
    return budget_update(budget=existing, is_active=True, **changes), False


def _validate_instance(budget: Budget) -> None:
    budget_validate(
        tenant=budget.tenant,
        scope=budget.scope,
        team=budget.team,
        api_key=budget.api_key,
        model_name=budget.model_name,
        period=budget.period,
        limit_usd=budget.limit_usd,
        thresholds=budget.thresholds,
        action=budget.action,
        customer=budget.customer,
    )


@dataclass(frozen=True, slots=True)
class CounterCheck:
    budget_id: int
    period_key: str
    customer: str
    counted_usd: Decimal | None  # None: no counter yet (it is seeded by the next request under the budget)
    ledger_usd: Decimal

    @property
    def agrees(self) -> bool:
        return self.counted_usd is None or self.counted_usd == self.ledger_usd


REBUILD_WAIT_SECONDS = 10.0


def _holds(budget: Budget, now: datetime) -> list[BudgetHold]:
    """The budget's counters in the current period: its one, or for each customer the counter of every customer
    with spend in the ledger this period (a counter without any has counted nothing a seed would change) but those
    with a budget of their own in its place."""
    entry = budget_entry(budget)
    if not entry.per_customer:
        return [BudgetHold.of(entry, now=now)]
    if entry.customer:
        return [BudgetHold.of(entry, now=now, customer=entry.customer)]
    window = budget_current_window(budget=budget, now=now)
    customers = _customers_records(budget, window).values_list("customer", flat=True).distinct().order_by("customer")
    return [BudgetHold.of(entry, now=now, customer=customer) for customer in customers.iterator()]


def budget_counters_rebuild(*, budget: Budget, now: datetime | None = None) -> Decimal:
    """Seed the current period's counters (Redis, else the database rows) from the ledger again, as a missing counter
    is seeded: the ledger's spend, the stream's backlog included, with the reservations in flight kept. Returns
    the spend they were set to, summed over the customers of a customer-scope budget."""
    now = now or timezone.now()
    return sum((_hold_rebuild(hold, now) for hold in _holds(budget, now)), Decimal(0))


def _hold_rebuild(hold: BudgetHold, now: datetime) -> Decimal:
    if sync_redis() is None:
        with transaction.atomic():
            counter = database_counters_locked([hold], seed=False)[hold.counter_key]
            return database_counter_seed(hold=hold, counter=counter)
    deadline = time.monotonic() + REBUILD_WAIT_SECONDS
    while (spent := counter_seed(hold=hold, now=now, force=True)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"budget {hold.entry.budget_id}: another process kept seeding the counter")
        time.sleep(0.05)
    return spent


def budget_counter_check(*, budget: Budget, now: datetime, customer: str = "") -> CounterCheck:
    """The budget's counter in the period holding `now` against the ledger; for the customer scope, `customer`'s."""
    entry = budget_entry(budget)
    return _counter_check(BudgetHold.of(entry, now=now, customer=entry.customer or customer))


def _counter_check(hold: BudgetHold) -> CounterCheck:
    client = sync_redis()
    if client is not None:
        spent, seeding = client.hmget(hold.redis_key, "spent", "seeding")
        counted = units_to_usd(int(spent)) if spent is not None and seeding is None else None
    else:
        counters = BudgetCounter.objects.for_tenant(hold.entry.tenant_id)
        counter = counters.filter(
            budget_id=hold.entry.budget_id, customer=hold.customer, period_key=hold.window.key
        ).first()
        counted = counter.spent_usd if counter else None
    return CounterCheck(
        budget_id=hold.entry.budget_id,
        period_key=hold.window.key,
        customer=hold.customer,
        counted_usd=counted,
        ledger_usd=ledger_spend(hold=hold),
    )


class CounterChecksIncomplete(Exception):
    """The nightly check went through every budget but could not check some (each is logged with its error)."""

    def __init__(self, *, failed_budget_ids: list[int], checked: int, disagreeing: list[CounterCheck]):
        self.failed_budget_ids, self.disagreeing = failed_budget_ids, disagreeing
        super().__init__(
            f"could not check {len(failed_budget_ids)} of {checked} active budgets (ids "
            f"{', '.join(map(str, failed_budget_ids))}); {len(disagreeing)} counters that disagreed were seeded again"
        )


def budget_counters_check(*, now: datetime | None = None) -> list[CounterCheck]:
    """Compare every active budget's counter with the ledger and seed again each that disagrees; returns those. Each
    budget's thresholds its current period's spend, or that of the period just ended, reached without an alert are
    raised too.

    A request settling during the comparison can make a counter look wrong; seeding it again is exact either way.
    Raises CounterChecksIncomplete, once every budget has had its turn, when some could not be checked.
    """
    now = now or timezone.now()
    disagreeing, failed = [], []
    # Unscoped, reviewed: the nightly check compares each budget's own counter with its own tenant's ledger.
    budgets = list(Budget.objects.unscoped().filter(is_active=True).select_related("tenant").order_by("pk"))
    for budget in budgets:
        try:
            disagreeing += _budget_counters_check(budget, now)
        except Exception:
            # Whatever fails for one budget (Redis, the database, a seed that never ended, the broker) is no reason
            # to leave the others unchecked.
            logger.exception("budget %s: counters not checked; checking the other budgets", budget.pk)
            failed.append(budget.pk)
    if failed:
        raise CounterChecksIncomplete(failed_budget_ids=failed, checked=len(budgets), disagreeing=disagreeing)
    return disagreeing


def _budget_counters_check(budget: Budget, now: datetime) -> list[CounterCheck]:
    disagreeing = []
    for hold in _suspect_holds(budget, now):
        check = _counter_check(hold)
        if check.agrees:
            continue
        spent = _hold_rebuild(hold, now)
        logger.warning(
            "budget %s counter for %s%s said %s USD, the ledger %s USD; seeded again from the ledger: %s USD",
            check.budget_id,
            check.period_key,
            f" (a customer's, {len(check.customer)} characters)" if check.customer else "",
            check.counted_usd,
            check.ledger_usd,
            spent,
        )
        disagreeing.append(check)
    _missed_thresholds_raise(budget, now)
    _ended_customer_counters_delete(budget, now)
    return disagreeing


def _missed_thresholds_raise(budget: Budget, now: datetime) -> None:
    """Raise the thresholds spend reached without an alert in the period that just ended, then in the current one: the
    check runs at 03:15 UTC, hours after a day east of UTC has ended, and a week or a month may end just before it.
    The ended period is left alone when the budget was made or changed (or its tenant's time zone) after it ended:
    that period's spend was held to other settings, or to none."""
    current = budget_current_window(budget=budget, now=now)
    if budget.updated_at < current.start:
        _period_missed_thresholds_raise(budget, at=current.start - timedelta(microseconds=1))
    _period_missed_thresholds_raise(budget, at=now)


def _period_missed_thresholds_raise(budget: Budget, *, at: datetime) -> None:
    """Queue the alert of the highest threshold the spend of the period holding `at` reached that has none, which
    raises the lower ones missing with it: a gateway process queues a crossing once, so an alert whose task failed for
    good (or whose message was lost) is raised here. The BudgetAlert rows keep each threshold to one alert."""
    entry = budget_entry(budget)
    hold = _most_spent_hold(budget, at)
    if hold is None:
        return
    raised = set(budget.alerts.filter(period_key=hold.window.key).values_list("threshold", flat=True))
    if raised.issuperset(entry.thresholds):
        return
    spent_units = usd_to_units(ledger_spend(hold=hold))
    missed = [t for t in entry.thresholds if t not in raised and t * entry.limit_units <= spent_units * 100]
    if missed:
        threshold_alert_raise_again(
            entry=entry,
            period_key=hold.window.key,
            threshold=missed[-1],
            spent_units=spent_units,
            customer=hold.customer,
        )


def _most_spent_hold(budget: Budget, at: datetime) -> BudgetHold | None:
    """The budget's counter in the period holding `at`; of a budget that holds each customer, its customer with the
    most spend there in Postgres (None without any): such a budget alerts once a period, for the first customer to
    reach it."""
    entry = budget_entry(budget)
    if not budget.holds_each_customer:
        return BudgetHold.of(entry, now=at, customer=entry.customer)
    top = _customers_spend(budget, budget_current_window(budget=budget, now=at)).order_by("-spent").first()
    return BudgetHold.of(entry, now=at, customer=top[0]) if top else None


def _ended_customer_counters_delete(budget: Budget, now: datetime) -> int:
    """Customers' database counters of periods that have ended and hold no reservation: Redis's expire with their
    period, but rows made while budgets ran on the database (no Redis, or its fallback) would otherwise pile up, one
    per customer and period, for ever."""
    if not budget.holds_each_customer:
        return 0
    current = budget_current_window(budget=budget, now=now).key
    deleted, _ = (
        BudgetCounter.objects.for_tenant(budget.tenant_id)
        .filter(budget=budget, reserved_usd=0)
        .exclude(customer="")
        .exclude(period_key=current)
        .delete()
    )
    return deleted


CHECK_CHUNK = 1000


def _suspect_holds(budget: Budget, now: datetime) -> Iterator[BudgetHold]:
    """The counters worth an exact check (which reads the ledger stream's backlog for each): all of a budget's but
    one that holds each customer, whose customers could be millions. For that one, the counters whose spend differs
    from the customer's rows in Postgres, found with one grouped query and a Redis read per thousand customers; a
    customer with records still in the stream is among them, and the exact check clears it."""
    entry = budget_entry(budget)
    if not budget.holds_each_customer:
        yield from _holds(budget, now)
        return
    spend = dict(_customers_spend(budget, budget_current_window(budget=budget, now=now)).order_by())
    customers = sorted(spend)
    for start in range(0, len(customers), CHECK_CHUNK):
        holds = [BudgetHold.of(entry, now=now, customer=c) for c in customers[start : start + CHECK_CHUNK]]
        for hold, counted in zip(holds, _counted(holds), strict=True):
            if counted is not None and counted != spend[hold.customer]:
                yield hold


def _customers_spend(budget: Budget, window: BudgetWindow) -> QuerySet:
    """(customer, spent) of each of the budget's customers with spend in the window, from Postgres."""
    return _customers_records(budget, window).values_list("customer").annotate(spent=Sum("cost_usd"))


def _customers_records(budget: Budget, window: BudgetWindow) -> QuerySet[UsageRecord]:
    """The window's ledger rows of the customers a budget for each customer holds: a customer with an active budget
    of their own for its period is held to that one instead (BudgetIndex.for_chain), so neither alerted nor counted
    under it."""
    own_budget = build_budget_index(tenant_id=budget.tenant_id).own_budget_customers(budget_entry(budget))
    return (
        UsageRecord.objects.for_tenant(budget.tenant_id)
        .filter(PRODUCT_ROWS, created_at__gte=window.start, created_at__lt=window.end)
        .exclude(customer="")
        .exclude(customer__in=own_budget)
    )


def _counted(holds: list[BudgetHold]) -> list[Decimal | None]:
    """What each counter holds as spent; None where there is none (or it is being seeded)."""
    client = sync_redis()
    if client is None:
        entry, window = holds[0].entry, holds[0].window
        rows = BudgetCounter.objects.for_tenant(entry.tenant_id).filter(
            budget_id=entry.budget_id, period_key=window.key, customer__in=[hold.customer for hold in holds]
        )
        spent = dict(rows.values_list("customer", "spent_usd"))
        return [spent.get(hold.customer) for hold in holds]
    pipe = client.pipeline(transaction=False)
    for hold in holds:
        pipe.hmget(hold.redis_key, "spent", "seeding")
    return [
        units_to_usd(int(spent)) if spent is not None and seeding is None else None for spent, seeding in pipe.execute()
    ]


def budget_delete(*, budget: Budget) -> None:
    budget.delete()
