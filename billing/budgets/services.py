"""Creating, changing and repairing budgets. The admin, the API and `manage.py budget_set` all come here."""

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import pairwise

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.budgets.counters import (
    BudgetHold,
    counter_seed,
    database_counter_seed,
    database_counters_locked,
    ledger_spend,
)
from billing.budgets.index import UNITS_PER_USD, budget_entry, units_to_usd
from billing.budgets.selectors import budget_current_window
from billing.models import AlertChannel, Budget, BudgetAction, BudgetPeriod, BudgetScope
from core.redis import sync_redis
from routing.models import Model, ModelKind
from tenants.models import ApiKey, Team, Tenant

logger = logging.getLogger(__name__)

BUDGET_FIELDS = ("scope", "team", "api_key", "model_name", "period", "limit_usd", "thresholds", "action", "is_active")


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
) -> None:
    """Refuse a budget that cannot mean anything, with one message per field."""
    errors: dict[str, str] = {}
    if scope not in BudgetScope.values:
        errors["scope"] = f"Scope must be one of {', '.join(BudgetScope.values)}."
    if period not in BudgetPeriod.values:
        errors["period"] = f"Period must be one of {', '.join(BudgetPeriod.values)}."
    if action not in BudgetAction.values:
        errors["action"] = f"Action must be one of {', '.join(BudgetAction.values)}."
    if limit_usd is None or limit_usd <= 0:
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
    thresholds: list[int] | None = None,
    action: str = BudgetAction.BLOCK,
    is_active: bool = True,
    channels: list[AlertChannel] | None = None,
) -> Budget:
    budget = Budget(tenant=tenant, limit_usd=limit_usd, period=period, scope=scope, team=team, api_key=api_key)
    budget.model_name, budget.action, budget.is_active = model_name, action, is_active
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
    action: str | None = None,
    thresholds: list[int] | None = None,
) -> tuple[Budget, bool]:
    """Create the budget for this target and period, or change the one there is. Returns it and whether it is new."""
    scope = (
        BudgetScope.TEAM
        if team
        else BudgetScope.KEY
        if api_key
        else BudgetScope.TENANT_MODEL
        if model_name
        else BudgetScope.TENANT
    )
    target = {"scope": scope, "team": team, "api_key": api_key, "model_name": model_name, "period": period}
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
    )


@dataclass(frozen=True, slots=True)
class CounterCheck:
    budget_id: int
    period_key: str
    counted_usd: Decimal | None  # None: no counter yet (it is seeded by the next request under the budget)
    ledger_usd: Decimal

    @property
    def agrees(self) -> bool:
        return self.counted_usd is None or self.counted_usd == self.ledger_usd


REBUILD_WAIT_SECONDS = 10.0


def _hold(budget: Budget, now: datetime) -> BudgetHold:
    return BudgetHold(entry=budget_entry(budget), window=budget_current_window(budget=budget, now=now))


def budget_counters_rebuild(*, budget: Budget, now: datetime | None = None) -> Decimal:
    """Seed the current period's counter (Redis, else the database row) from the ledger again, as a missing counter
    is seeded: the ledger's spend, the stream's backlog included, with the reservations in flight kept."""
    now = now or timezone.now()
    hold = _hold(budget, now)
    if sync_redis() is None:
        with transaction.atomic():
            counter = database_counters_locked([hold], seed=False)[budget.pk, hold.window.key]
            return database_counter_seed(hold=hold, counter=counter)
    deadline = time.monotonic() + REBUILD_WAIT_SECONDS
    while (spent := counter_seed(hold=hold, now=now, force=True)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"budget {budget.pk}: another process kept seeding the counter")
        time.sleep(0.05)
    return spent


def budget_counter_check(*, budget: Budget, now: datetime) -> CounterCheck:
    hold = _hold(budget, now)
    client = sync_redis()
    if client is not None:
        spent, seeding = client.hmget(hold.redis_key, "spent", "seeding")
        counted = units_to_usd(int(spent)) if spent is not None and seeding is None else None
    else:
        counter = budget.counters.filter(period_key=hold.window.key).first()
        counted = counter.spent_usd if counter else None
    return CounterCheck(
        budget_id=budget.pk, period_key=hold.window.key, counted_usd=counted, ledger_usd=ledger_spend(hold=hold)
    )


def budget_counters_check(*, now: datetime | None = None) -> list[CounterCheck]:
    """Compare every active budget's counter with the ledger and seed again each that disagrees; returns those.

    A request settling during the comparison can make a counter look wrong; seeding it again is exact either way.
    """
    now = now or timezone.now()
    disagreeing = []
    # Unscoped, reviewed: the nightly check compares each budget's own counter with its own tenant's ledger.
    for budget in Budget.objects.unscoped().filter(is_active=True).select_related("tenant"):
        check = budget_counter_check(budget=budget, now=now)
        if not check.agrees:
            spent = budget_counters_rebuild(budget=budget, now=now)
            logger.warning(
                "budget %s counter for %s said %s USD, the ledger %s USD; seeded again from the ledger: %s USD",
                check.budget_id,
                check.period_key,
                check.counted_usd,
                check.ledger_usd,
                spent,
            )
            disagreeing.append(check)
    return disagreeing


def budget_delete(*, budget: Budget) -> None:
    budget.delete()
