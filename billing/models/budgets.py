"""Budgets, the counters that enforce them when Redis is absent, and the rate limits beside them."""

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from billing.models.ledger import COST_FIELD, CUSTOMER_MAX_LENGTH
from tenants.models import ApiKey, Team, Tenant
from tenants.scoping import TenantOwned, TenantScopedManager

DEFAULT_THRESHOLDS = (50, 80, 100)


def default_thresholds() -> list[int]:
    return list(DEFAULT_THRESHOLDS)


class BudgetScope(models.TextChoices):
    TENANT = "tenant", "Whole tenant"
    TEAM = "team", "One team"
    KEY = "key", "One API key"
    TENANT_MODEL = "tenant_model", "One served model across the tenant"
    CUSTOMER = "customer", "Each end customer, held to its own limit"


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week (Monday to Sunday)"
    MONTH = "month", "Calendar month"


class BudgetAction(models.TextChoices):
    BLOCK = "block", "Block (429 budget_exceeded)"
    DOWNGRADE = "downgrade", "Downgrade to the cheaper fallback route"
    NOTIFY = "notify", "Notify only"


class Budget(TenantOwned, models.Model):
    """A spending limit per period in the tenant's time zone. Validated by billing.budgets.services."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budgets")
    scope = models.CharField(max_length=16, choices=BudgetScope.choices, default=BudgetScope.TENANT)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    model_name = models.CharField(max_length=128, blank=True, help_text="Served model, for the tenant+model scope.")
    customer = models.CharField(
        max_length=CUSTOMER_MAX_LENGTH,
        blank=True,
        help_text="Customer scope only: empty holds every customer to this limit each; a customer id makes this that "
        "customer's limit instead of the default of the same period.",
    )
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    limit_usd = models.DecimalField(**COST_FIELD, validators=[MinValueValidator(0)])
    thresholds = models.JSONField(default=default_thresholds, help_text="Percentages of the limit that alert.")
    action = models.CharField(max_length=16, choices=BudgetAction.choices, default=BudgetAction.BLOCK)
    is_active = models.BooleanField(default=True)
    channels = models.ManyToManyField("billing.AlertChannel", blank=True, related_name="budgets")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["tenant__slug", "scope", "period", "pk"]
        constraints = [models.CheckConstraint(condition=Q(limit_usd__gt=0), name="budget_limit_positive")]

    def __str__(self):
        return f"{self.tenant.slug} {self.target_label()} {self.period} ${self.limit_usd.normalize():f}"

    @property
    def holds_each_customer(self) -> bool:
        """A customer-scope budget for every customer: its spend is per customer, no one figure."""
        return self.scope == BudgetScope.CUSTOMER and not self.customer

    def target_label(self) -> str:
        if self.scope == BudgetScope.TEAM:
            return f"team {self.team.slug}"
        if self.scope == BudgetScope.KEY:
            return f"key {self.api_key.prefix}"
        if self.scope == BudgetScope.TENANT_MODEL:
            return f"model {self.model_name}"
        if self.scope == BudgetScope.CUSTOMER:
            return f"customer {self.customer}" if self.customer else "each customer"
        return "tenant"


class BudgetCounter(models.Model):
    """Spend and open reservations of one budget in one period: the database fallback when there is no Redis."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="counters")
    customer = models.CharField(
        max_length=CUSTOMER_MAX_LENGTH, blank=True, default="", help_text="Customer scope: whose spend this counts."
    )
    period_key = models.CharField(max_length=16)
    spent_usd = models.DecimalField(**COST_FIELD, default=0)
    reserved_usd = models.DecimalField(**COST_FIELD, default=0)
    version = models.BigIntegerField(default=0, help_text="The budget version the spend was seeded for.")
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager(tenant_path="budget__tenant")

    class Meta:
        ordering = ["budget", "-period_key"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "customer", "period_key"], name="budget_counter_unique_period")
        ]

    def __str__(self):
        return (
            f"{self.budget_id}:{self.customer}:{self.period_key}"
            if self.customer
            else f"{self.budget_id}:{self.period_key}"
        )


class RateLimitScope(models.TextChoices):
    KEY = "key", "One API key"
    TEAM = "team", "One team"
    CUSTOMER = "customer", "Each end customer, held to its own limit"


class RateLimit(TenantOwned, models.Model):
    """Requests and tokens per minute for one key, one team, or each end customer; empty means unlimited."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="rate_limits")
    scope = models.CharField(max_length=16, choices=RateLimitScope.choices, default=RateLimitScope.KEY)
    customer = models.CharField(
        max_length=CUSTOMER_MAX_LENGTH,
        blank=True,
        help_text="Customer scope only: empty holds every customer to this limit each; a customer id makes this that "
        "customer's limit instead.",
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="rate_limits")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="rate_limits")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["tenant__slug", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(scope=RateLimitScope.KEY, team__isnull=True, api_key__isnull=False, customer="")
                | Q(scope=RateLimitScope.TEAM, team__isnull=False, api_key__isnull=True, customer="")
                | Q(scope=RateLimitScope.CUSTOMER, team__isnull=True, api_key__isnull=True),
                name="rate_limit_one_target",
            ),
            models.UniqueConstraint(fields=["team"], name="rate_limit_unique_team"),
            models.UniqueConstraint(fields=["api_key"], name="rate_limit_unique_key"),
            models.UniqueConstraint(
                fields=["tenant", "customer"],
                condition=Q(scope=RateLimitScope.CUSTOMER),
                name="rate_limit_unique_customer",
            ),
        ]

    def __str__(self):
        return f"{self.tenant.slug} {self.target_label()}"

    def target_label(self) -> str:
        if self.scope == RateLimitScope.CUSTOMER:
            return f"customer {self.customer}" if self.customer else "each customer"
        return f"key {self.api_key.prefix}" if self.api_key_id else f"team {self.team.slug}"
