"""KPI figures for the admin dashboard, read from the daily rollups only (never the raw ledger).

Definitions (all over the requests in the range, errors included):
- cost per 1,000 requests = total cost / requests * 1000
- average prompt / completion tokens = token total / requests
- cache hit rate = exact + semantic cache hits / requests
- routed-to-large % = requests the router sent to the tenant's large model / requests
- p95 latency = estimated from the summed latency histogram (see billing.finance.rollups.latency_p95_ms)
- error rate = requests answered with HTTP status ≥ 400 / requests
- saved = the savings every lever recorded in the ledger (cache, routing, compression, batch discount, provider
  prompt cache)
- baseline = spend + saved: what the requests would have cost on the premium model with no cache, compression,
  batch discount or provider prompt cache; saved % = saved / baseline
- spend and savings are product traffic's: the shadow evaluations' calls are the evaluation spend, shown on its own
- agreement of a lever = evaluations whose answer agreed with the reference's / evaluations, with its 95% Wilson
  interval (billing.quality.selectors), over the same days, read from the shadow evaluations (a small table, not the
  ledger); it is the tenant's, whatever team is picked
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from django.db.models import Sum
from django.utils import timezone

from billing.budgets.selectors import budget_status
from billing.finance.rollups import floor_hour, histogram_sum, latency_p95_ms
from billing.ledger.columns import NO_SERVED_MODEL
from billing.ledger.costs import ZERO_USD
from billing.ledger.selectors import tenant_days_bounds, tenant_zone
from billing.ledger.totals import LedgerTotals
from billing.models import Budget, Lever, UsageCustomerRollupHourly, UsageRollupDaily
from billing.quality.selectors import GROUPINGS, Agreement, agreement_by, agreement_by_lever
from billing.templatetags.finance import cents
from tenants.models import Team, Tenant

LEVER_LABELS = {
    "cache": "Response cache (exact + semantic)",
    "routing": "Routing to a cheaper model",
    "compression": "Prompt compression",
    "batch": "Batch discount",
    "provider_cache": "Provider prompt cache",
}
# The shadow-evaluated levers behind each saving: a semantic hit is the cache's, a budget downgrade saves as routing
# does. Exact hits, batch discounts and the provider's prompt cache return the answer the model gives anyway.
QUALITY_LEVERS = {
    "cache": (Lever.SEMANTIC_CACHE,),
    "routing": (Lever.ROUTING, Lever.BUDGET_DOWNGRADE),
    "compression": (Lever.COMPRESSION,),
    "batch": (),
    "provider_cache": (),
}
QUALITY_ROWS_SHOWN = 25


@dataclass(frozen=True, slots=True)
class LeverRow:
    """A saving lever on the dashboard: what it saved, and how its answers compare with their references."""

    lever: str
    label: str
    saved: str
    share: str
    quality: list[tuple[str, str, Agreement]]  # (lever, label, agreement) of each shadow-evaluated lever behind it


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """What the budget hook returns for each budget in scope."""

    name: str
    limit_usd: Decimal
    spent_usd: Decimal

    @property
    def used_percent(self) -> float | None:
        return float(self.spent_usd / self.limit_usd * 100) if self.limit_usd else None


@dataclass(slots=True)
class UsageTotals(LedgerTotals):
    """The totals of daily rollups, with their latency histograms summed."""

    latency_histogram: list[int] = field(default_factory=list)
    evaluation_cost_usd: Decimal = ZERO_USD

    def add(self, rollup: UsageRollupDaily) -> None:
        LedgerTotals.add(self, rollup)  # not super(): a slots dataclass is a rebuilt class, which super() misses
        self.latency_histogram = histogram_sum([self.latency_histogram, rollup.latency_histogram])
        self.evaluation_cost_usd += rollup.evaluation_cost_usd

    def _rate(self, count: int) -> float | None:
        return count / self.requests if self.requests else None

    @property
    def cost_per_1k_requests(self) -> Decimal | None:
        if not self.requests:
            return None
        return (self.cost_usd * 1000 / self.requests).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)

    @property
    def avg_prompt_tokens(self) -> float | None:
        return self._rate(self.prompt_tokens)

    @property
    def avg_completion_tokens(self) -> float | None:
        return self._rate(self.completion_tokens)

    @property
    def cache_hit_rate(self) -> float | None:
        return self._rate(self.cache_hits)

    @property
    def error_rate(self) -> float | None:
        return self._rate(self.errors)

    @property
    def routed_to_large_rate(self) -> float | None:
        return self._rate(self.routed_to_large)

    @property
    def p95_latency_ms(self) -> float | None:
        return latency_p95_ms(self.latency_histogram)

    def share_of_baseline(self, amount: Decimal) -> float | None:
        return float(amount / self.baseline_usd) if self.baseline_usd else None


@dataclass(frozen=True, slots=True)
class CustomerSpend:
    customer: str
    requests: int
    cost_usd: Decimal


@dataclass
class Dashboard:
    tenant: Tenant
    since: date
    until: date
    team: Team | None
    totals: UsageTotals
    days: list[tuple[date, UsageTotals]]
    spend_by_model: dict[str, Decimal]
    budgets: list[BudgetUsage]
    top_customers: list[CustomerSpend] = field(default_factory=list)
    # Agreement per lever (every lever, no samples where none were evaluated), and per lever, rule, served model and
    # task type, the lowest upper bound first: the groups surely worst come first, a few evaluations' noise last.
    quality_by_lever: dict[str, Agreement] = field(default_factory=dict)
    quality_groups: list[Agreement] = field(default_factory=list)

    def headline(self) -> dict[str, str]:
        """Saved against the all-premium, no-cache baseline, as displayed: money in cents, the share to one place."""
        totals = self.totals
        return {
            "saved": cents(totals.saved_usd),
            "saved_percent": _percent_text(totals.share_of_baseline(totals.saved_usd)),
            "baseline": cents(totals.baseline_usd),
            "spend": cents(totals.cost_usd),
        }

    def savings_rows(self) -> list[tuple[str, str, str, str]]:
        """(lever, label, saved in cents, share of the baseline) per lever."""
        totals = self.totals
        return [
            (lever, LEVER_LABELS[lever], cents(saved), _percent_text(totals.share_of_baseline(saved)))
            for lever, saved in totals.savings_by_lever.items()
        ]

    def lever_rows(self) -> list[LeverRow]:
        """Each saving lever with the agreement of the shadow-evaluated levers behind it."""
        return [
            LeverRow(
                lever=lever,
                label=label,
                saved=saved,
                share=share,
                quality=[
                    (
                        quality_lever,
                        Lever(quality_lever).label,
                        self.quality_by_lever.get(quality_lever, Agreement(0, 0)),
                    )
                    for quality_lever in QUALITY_LEVERS[lever]
                ],
            )
            for lever, label, saved, share in self.savings_rows()
        ]

    @property
    def quality_groups_shown(self) -> list[Agreement]:
        return self.quality_groups[:QUALITY_ROWS_SHOWN]

    @property
    def evaluation_spend(self) -> str:
        """What shadow evaluation cost in the days, in cents: in none of the spend and savings figures."""
        return cents(self.totals.evaluation_cost_usd)

    def kpis(self) -> list[tuple[str, str, str]]:
        """(id, label, displayed value) per KPI card; rates as percentages to one place, money rounded half-even."""
        totals = self.totals
        p95 = totals.p95_latency_ms
        return [
            ("spend", "Spend (USD)", cents(totals.cost_usd)),
            ("requests", "Requests", str(totals.requests)),
            ("cost-per-1k", "Cost per 1,000 requests (USD)", _or_dash(totals.cost_per_1k_requests)),
            ("avg-prompt", "Avg prompt tokens", _or_dash(totals.avg_prompt_tokens, "{:.1f}")),
            ("avg-completion", "Avg completion tokens", _or_dash(totals.avg_completion_tokens, "{:.1f}")),
            ("cache-hit-rate", "Cache hit rate", _percent_text(totals.cache_hit_rate)),
            ("routed-large", "Routed to large model", _percent_text(totals.routed_to_large_rate)),
            ("p95", "p95 latency (ms, estimated)", _or_dash(p95, "{:.0f}")),
            ("error-rate", "Error rate", _percent_text(totals.error_rate)),
        ]

    def chart_data(self) -> dict:
        """The series the charts draw, as JSON-safe values (money as strings rounded to cents for the axis)."""
        return {
            "days": [day.isoformat() for day, _ in self.days],
            "spend": [cents(totals.cost_usd) for _, totals in self.days],
            "requests": [totals.requests for _, totals in self.days],
            "error_rate": [_percent(totals.error_rate) for _, totals in self.days],
            "cache_hit_rate": [_percent(totals.cache_hit_rate) for _, totals in self.days],
            "routed_to_large": [_percent(totals.routed_to_large_rate) for _, totals in self.days],
            "p95_latency_ms": [totals.p95_latency_ms for _, totals in self.days],
            "savings": {LEVER_LABELS[lever]: cents(value) for lever, value in self.totals.savings_by_lever.items()},
            "spend_by_model": {model: cents(value) for model, value in self.spend_by_model.items()},
            "top_customers": {row.customer: cents(row.cost_usd) for row in self.top_customers},
        }


def _or_dash(value, template: str = "{}") -> str:
    return "–" if value is None else template.format(value)


def _percent_text(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f} %"


def _percent(rate: float | None) -> float | None:
    return round(rate * 100, 2) if rate is not None else None


def budget_usage(*, tenant: Tenant, since: date, until: date) -> list[BudgetUsage]:
    """Each active budget's spend in its period that contains `until` (the current one for a range ending today).
    A budget for each customer has no one figure: the top customers show who spends."""
    zone = tenant_zone(tenant=tenant)
    end_of_range = datetime.combine(until, time.max, tzinfo=zone)
    moment = min(timezone.now(), end_of_range)
    budgets = Budget.objects.for_tenant(tenant).filter(is_active=True).select_related("team", "api_key")
    statuses = [budget_status(budget=budget, now=moment) for budget in budgets if not budget.holds_each_customer]
    return [
        BudgetUsage(
            name=f"{status.budget} ({status.window.key})", limit_usd=status.budget.limit_usd, spent_usd=status.spent_usd
        )
        for status in statuses
    ]


TOP_CUSTOMERS = 10


def top_customers(*, tenant: Tenant, since: date, until: date, team: Team | None = None) -> list[CustomerSpend]:
    """The end customers who spent most in the days (tenant time zone), from the hourly customer rollups: exact for
    a time zone a whole number of hours from UTC, to the UTC hour around the range's ends otherwise."""
    start, end = tenant_days_bounds(tenant=tenant, since=since, until=until)
    rollups = UsageCustomerRollupHourly.objects.for_tenant(tenant).filter(
        bucket_start__gte=floor_hour(start.astimezone(UTC)), bucket_start__lt=end
    )
    if team is not None:
        rollups = rollups.filter(team=team)
    rows = (
        rollups.values("customer")
        .annotate(requests=Sum("requests"), cost_usd=Sum("cost_usd"))
        .order_by("-cost_usd", "customer")[:TOP_CUSTOMERS]
    )
    return [CustomerSpend(**row) for row in rows]


def quality_build(*, tenant: Tenant, since: date, until: date) -> tuple[dict[str, Agreement], list[Agreement]]:
    """Agreement by lever (every lever) and by lever, rule, served model and task type, over the days."""
    start, end = tenant_days_bounds(tenant=tenant, since=since, until=until)
    window = {"tenant_id": tenant.pk, "start": start, "end": end}
    groups = agreement_by(**window, group_by=GROUPINGS)
    return agreement_by_lever(**window), sorted(groups, key=lambda row: (row.upper, -row.samples))


def dashboard_build(*, tenant: Tenant, since: date, until: date, team: Team | None = None) -> Dashboard:
    rollups = UsageRollupDaily.objects.for_tenant(tenant).filter(day__gte=since, day__lte=until)
    if team is not None:
        rollups = rollups.filter(team=team)
    totals = UsageTotals()
    by_day: dict[date, UsageTotals] = defaultdict(UsageTotals)
    spend_by_model: dict[str, Decimal] = defaultdict(Decimal)
    for rollup in rollups.order_by("day"):
        totals.add(rollup)
        by_day[rollup.day].add(rollup)
        if rollup.requests or rollup.cost_usd:  # a bucket of evaluation calls only is no product model's spend
            spend_by_model[rollup.served_model or NO_SERVED_MODEL] += rollup.cost_usd
    quality_by_lever, quality_groups = quality_build(tenant=tenant, since=since, until=until)
    return Dashboard(
        tenant=tenant,
        since=since,
        until=until,
        team=team,
        totals=totals,
        days=[(day, by_day.get(day, UsageTotals())) for day in _days(since, until)],
        spend_by_model=dict(sorted(spend_by_model.items(), key=lambda item: -item[1])),
        budgets=budget_usage(tenant=tenant, since=since, until=until),
        top_customers=top_customers(tenant=tenant, since=since, until=until, team=team),
        quality_by_lever=quality_by_lever,
        quality_groups=quality_groups,
    )


def _days(since: date, until: date) -> Iterable[date]:
    return (since + timedelta(days=offset) for offset in range((until - since).days + 1))
