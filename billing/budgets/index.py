"""The active budgets and rate limits as frozen objects, built per tenant when its configuration is loaded.

The gateway reloads a tenant's when one of its Budget, RateLimit or Tenant (time zone) rows is saved or deleted.

A customer-scope budget or rate limit is one row that holds each end customer of the tenant to its own limit (its
counters are per customer, named by the request's customer); a row naming a customer is that customer's own limit
instead (for budgets, instead of the default of the same period). A request without a customer is held to none.
"""

import hashlib
from collections.abc import Container
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from zoneinfo import ZoneInfo

from billing.models import Budget, BudgetAction, BudgetScope, RateLimit, RateLimitScope
from tenants.time_zones import tenant_zone_or_utc

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
    # Customer scope: the one customer this budget is for, "" for every customer (each its own counter).
    customer: str = ""

    @property
    def limit_units(self) -> int:
        return int(self.limit_usd * UNITS_PER_USD)

    @property
    def enforced(self) -> bool:
        """Block and downgrade budgets refuse what would go over; notify budgets only alert."""
        return self.action != BudgetAction.NOTIFY

    @property
    def per_customer(self) -> bool:
        return self.scope == BudgetScope.CUSTOMER

    def applies_to(self, *, team_id: int, key_id: int, model_name: str, customer: str = "") -> bool:
        return self.applies_to_any(team_id=team_id, key_id=key_id, model_names=(model_name,), customer=customer)

    def applies_to_any(self, *, team_id: int, key_id: int, model_names: Container[str], customer: str = "") -> bool:
        """Whether a request that one of `model_names` may serve is held to this budget."""
        if self.scope == BudgetScope.CUSTOMER:
            return bool(customer) and self.customer in ("", customer)
        if self.scope == BudgetScope.TEAM:
            return self.team_id == team_id
        if self.scope == BudgetScope.KEY:
            return self.key_id == key_id
        if self.scope == BudgetScope.TENANT_MODEL:
            return self.model_name in model_names
        return True

    def replaces(self, other: "BudgetEntry") -> bool:
        """Whether this budget, one customer's own, takes the place for that customer of `other`, the tenant's budget
        for each customer: when they are of the same period."""
        return (
            self.per_customer
            and bool(self.customer)
            and other.per_customer
            and not other.customer
            and self.tenant_id == other.tenant_id
            and self.period == other.period
        )

    def spends_on(self, served_model: str | None) -> bool:
        """Whether spend on the model that served (None: not known, every hold is charged) is this budget's: a model
        budget counts only its own model, whichever of a chain's models the request was held to."""
        return self.scope != BudgetScope.TENANT_MODEL or served_model is None or self.model_name == served_model

    def counts(self, *, tenant_id: int, team_id: int, key_id: int, served_model: str, customer: str = "") -> bool:
        """Whether a ledger record with these fields is spend of this budget (the model is the one that served); for
        the customer scope, of some customer's spend under it (a counter counts only its own customer's)."""
        return tenant_id == self.tenant_id and self.applies_to(
            team_id=team_id, key_id=key_id, model_name=served_model, customer=customer
        )


@dataclass(frozen=True, slots=True)
class BudgetIndex:
    by_tenant: dict[int, tuple[BudgetEntry, ...]] = field(default_factory=dict)

    def applicable(
        self, tenant_id: int, team_id: int, key_id: int, model_name: str, customer: str = ""
    ) -> list[BudgetEntry]:
        """The budgets a request is held to; a customer's own budget of a period replaces the default of that period."""
        return self.for_chain(tenant_id, team_id, key_id, (model_name,), customer)

    def for_chain(
        self, tenant_id: int, team_id: int, key_id: int, model_names: Container[str], customer: str = ""
    ) -> list[BudgetEntry]:
        """The budgets a request that any of `model_names` may serve is held to: each model's own, with the rest."""
        entries = [
            entry
            for entry in self.by_tenant.get(tenant_id, ())
            if entry.applies_to_any(team_id=team_id, key_id=key_id, model_names=model_names, customer=customer)
        ]
        own = [entry for entry in entries if entry.customer]
        if not own:
            return entries
        return [entry for entry in entries if not any(budget.replaces(entry) for budget in own)]

    def own_budget_customers(self, default: BudgetEntry) -> set[str]:
        """The customers whose own active budget replaces `default`, a budget for each customer, as for_chain replaces
        it: none of their requests is held to it, so none of their spend is its."""
        return {entry.customer for entry in self.by_tenant.get(default.tenant_id, ()) if entry.replaces(default)}


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
        customer=budget.customer,
    )


def build_budget_index(*, tenant_id: int) -> BudgetIndex:
    """The tenant's active budgets."""
    budgets = Budget.objects.for_tenant(tenant_id).filter(is_active=True).select_related("tenant").order_by("pk")
    by_tenant: dict[int, list[BudgetEntry]] = {}
    for budget in budgets:
        by_tenant.setdefault(budget.tenant_id, []).append(budget_entry(budget))
    return BudgetIndex(by_tenant={tenant_id: tuple(entries) for tenant_id, entries in by_tenant.items()})


def customer_digest(customer: str) -> str:
    """A customer's id as it goes into a counter's Redis key: fixed length, whatever characters the id holds."""
    return hashlib.blake2b(customer.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class RateLimitEntry:
    rate_limit_id: int
    subject: str  # "key:<id>", "team:<id>" or "customer:<id>", the counter's name (a customer's is completed below)
    requests_per_minute: int | None
    tokens_per_minute: int | None

    def for_customer(self, customer: str) -> "RateLimitEntry":
        """The entry whose counters are this customer's own: its subject names the limit and the customer."""
        return replace(self, subject=f"{self.subject}:{customer_digest(customer)}")


@dataclass(frozen=True, slots=True)
class RateLimitIndex:
    by_key: dict[int, RateLimitEntry] = field(default_factory=dict)
    by_team: dict[int, RateLimitEntry] = field(default_factory=dict)
    # The tenant's limit for each customer, and customers' own limits in its place, by customer id.
    each_customer: RateLimitEntry | None = None
    by_customer: dict[str, RateLimitEntry] = field(default_factory=dict)

    def applicable(self, *, key_id: int, team_id: int, customer: str = "") -> list[RateLimitEntry]:
        entries = [self.by_key.get(key_id), self.by_team.get(team_id)]
        if customer:
            limit = self.by_customer.get(customer, self.each_customer)
            entries.append(limit.for_customer(customer) if limit is not None else None)
        return [entry for entry in entries if entry is not None]


def build_rate_limit_index(*, tenant_id: int) -> RateLimitIndex:
    """The tenant's active rate limits."""
    rate_limits = RateLimit.objects.for_tenant(tenant_id).filter(is_active=True).order_by("pk")
    by_key, by_team, by_customer, each_customer = {}, {}, {}, None
    for rate_limit in rate_limits:
        if rate_limit.scope == RateLimitScope.CUSTOMER:
            entry = RateLimitEntry(
                rate_limit.pk,
                f"customer:{rate_limit.pk}",
                rate_limit.requests_per_minute,
                rate_limit.tokens_per_minute,
            )
            if rate_limit.customer:
                by_customer[rate_limit.customer] = entry
            else:
                each_customer = entry
        elif rate_limit.api_key_id:
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
    return RateLimitIndex(by_key=by_key, by_team=by_team, each_customer=each_customer, by_customer=by_customer)
