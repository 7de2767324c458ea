"""The active budgets and rate limits as frozen objects, built per tenant when its configuration is loaded.

The gateway reloads a tenant's when one of its Budget, RateLimit or Tenant (time zone) rows is saved or deleted.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing.models import Budget, BudgetAction, BudgetScope, RateLimit

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNITS_PER_USD = 10**10  # the ledger's quantum, 1e-10 USD, so counters are exact integers


def usd_to_units(amount: Decimal) -> int:
    return int((amount * UNITS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def units_to_usd(units: int) -> Decimal:
    return Decimal(units).scaleb(-10)


@dataclass(frozen=True, slots=True)
class BudgetEntry:
    budget_id: int
    tenant_id: int
    scope: str
    team_id: int | None
    key_id: int | None
    model_name: str
    period: str
    limit_usd: Decimal
    thresholds: tuple[int, ...]
    action: str
    zone: ZoneInfo
    # The budget's last change (updated_at in microseconds): a counter seeded for an older version is seeded again.
    version: int

    @property
    def limit_units(self) -> int:
        return int(self.limit_usd * UNITS_PER_USD)

    @property
    def enforced(self) -> bool:
        """Block and downgrade budgets refuse what would go over; notify budgets only alert."""
        return self.action != BudgetAction.NOTIFY

    def applies_to(self, *, team_id: int, key_id: int, model_name: str) -> bool:
        if self.scope == BudgetScope.TEAM:
            return self.team_id == team_id
        if self.scope == BudgetScope.KEY:
            return self.key_id == key_id
        if self.scope == BudgetScope.TENANT_MODEL:
            return self.model_name == model_name
        return True

    def counts(self, *, tenant_id: int, team_id: int, key_id: int, served_model: str) -> bool:
        """Whether a ledger record with these fields is spend of this budget (the model is the one that served)."""
        return tenant_id == self.tenant_id and self.applies_to(team_id=team_id, key_id=key_id, model_name=served_model)


@dataclass(frozen=True, slots=True)
class BudgetIndex:
    by_tenant: dict[int, tuple[BudgetEntry, ...]] = field(default_factory=dict)

    def applicable(self, tenant_id: int, team_id: int, key_id: int, model_name: str) -> list[BudgetEntry]:
        return [
            entry
            for entry in self.by_tenant.get(tenant_id, ())
            if entry.applies_to(team_id=team_id, key_id=key_id, model_name=model_name)
        ]


def tenant_zone_or_utc(time_zone: str) -> ZoneInfo:
    try:
        return ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        logger.error("unknown time zone %r; budget periods fall back to UTC", time_zone)
        return ZoneInfo("UTC")


def budget_entry(budget: Budget) -> BudgetEntry:
    return BudgetEntry(
        budget_id=budget.pk,
        tenant_id=budget.tenant_id,
        scope=budget.scope,
        team_id=budget.team_id,
        key_id=budget.api_key_id,
        model_name=budget.model_name,
        period=budget.period,
        limit_usd=budget.limit_usd,
        thresholds=tuple(sorted(budget.thresholds)),
        action=budget.action,
        zone=tenant_zone_or_utc(budget.tenant.time_zone),
        version=(budget.updated_at - EPOCH) // timedelta(microseconds=1),
    )


def build_budget_index(*, tenant_id: int) -> BudgetIndex:
    """The tenant's active budgets."""
    budgets = Budget.objects.for_tenant(tenant_id).filter(is_active=True).select_related("tenant").order_by("pk")
    by_tenant: dict[int, list[BudgetEntry]] = {}
    for budget in budgets:
        by_tenant.setdefault(budget.tenant_id, []).append(budget_entry(budget))
    return BudgetIndex(by_tenant={tenant_id: tuple(entries) for tenant_id, entries in by_tenant.items()})


@dataclass(frozen=True, slots=True)
class RateLimitEntry:
    rate_limit_id: int
    subject: str  # "key:<id>" or "team:<id>", the counter's name
    requests_per_minute: int | None
    tokens_per_minute: int | None


@dataclass(frozen=True, slots=True)
class RateLimitIndex:
    by_key: dict[int, RateLimitEntry] = field(default_factory=dict)
    by_team: dict[int, RateLimitEntry] = field(default_factory=dict)

    def applicable(self, *, key_id: int, team_id: int) -> list[RateLimitEntry]:
        return [entry for entry in (self.by_key.get(key_id), self.by_team.get(team_id)) if entry is not None]


def build_rate_limit_index(*, tenant_id: int) -> RateLimitIndex:
    """The tenant's active rate limits."""
    rate_limits = RateLimit.objects.for_tenant(tenant_id).filter(is_active=True).order_by("pk")
    by_key, by_team = {}, {}
    for rate_limit in rate_limits:
        if rate_limit.api_key_id:
            by_key[rate_limit.api_key_id] = RateLimitEntry(
                rate_limit.pk,
                f"key:{rate_limit.api_key_id}",
                rate_limit.requests_per_minute,
                rate_limit.tokens_per_minute,
            )
        else:
            by_team[rate_limit.team_id] = RateLimitEntry(
                rate_limit.pk,
                f"team:{rate_limit.team_id}",
                rate_limit.requests_per_minute,
                rate_limit.tokens_per_minute,
            )
    return RateLimitIndex(by_key=by_key, by_team=by_team)
