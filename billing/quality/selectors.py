"""Agreement of the shadow evaluations, by lever, rule, served model and task type, and what evaluation cost.

Agreement is the share of evaluations whose answer agreed with the reference's, with its 95% Wilson score interval:
unlike the normal approximation it stays inside [0, 1] and is honest at small counts and at rates near 1, where the
levers live. Every rate is a Decimal to four places: the point estimate rounded half to even, the lower bound rounded
down and the upper bound up, so the shown interval always contains the computed one (a lower bound shown under an
SLO's minimum is under it).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext
from functools import lru_cache

from django.db.models import Count, Q, QuerySet, Sum

from billing.ledger.costs import ZERO_USD, format_cost
from billing.ledger.selectors import ledger_between, tenant_days_bounds
from billing.models import Lever, ShadowEvaluation, UsageKind, UsageRecord
from routing.policy.engine import SCORED_ROUTE
from tenants.models import Tenant

# The normal quantile of a two-sided 95% interval.
Z_95 = Decimal("1.959963984540054")
RATE_PLACES = Decimal("0.0001")
GROUPINGS = ("lever", "rule", "served_model", "task_type")
# Routes that name no rule (billing.models.UsageRecord.route): the alias's score alone, or the requested model kept.
NO_RULE_ROUTES = frozenset({SCORED_ROUTE, "direct"})


def wilson_interval(agreeing: int, samples: int) -> tuple[Decimal, Decimal]:
    """The 95% Wilson score interval of agreeing/samples, unrounded; (0, 1) when there are no samples."""
    if not 0 <= agreeing <= samples:
        raise ValueError(f"{agreeing} agreeing of {samples} samples")
    if samples == 0:
        return Decimal(0), Decimal(1)
    with localcontext() as context:
        context.prec = 34
        n, rate, z2 = Decimal(samples), Decimal(agreeing) / Decimal(samples), Z_95 * Z_95
        denominator = 1 + z2 / n
        centre = (rate + z2 / (2 * n)) / denominator
        half_width = Z_95 * (rate * (1 - rate) / n + z2 / (4 * n * n)).sqrt() / denominator
        return max(Decimal(0), centre - half_width), min(Decimal(1), centre + half_width)


@lru_cache(maxsize=256)
def perfect_record_samples(min_agreement: Decimal) -> int:
    """The fewest evaluations at which a record with no disagreement has a lower bound (as Agreement rounds it) of at
    least ``min_agreement``: below it the interval cannot tell a perfect lever from one under the minimum, about
    z²·m/(1-m) (73 at 0.95, 381 at 0.99). ``min_agreement`` must be below 1."""
    if not 0 <= min_agreement < 1:
        raise ValueError(f"min_agreement {min_agreement} must be at least 0 and below 1")
    samples = max(1, int(Z_95 * Z_95 * min_agreement / (1 - min_agreement)) - 2)
    while Agreement(agreeing=samples, samples=samples).lower < min_agreement:
        samples += 1
    return samples


def rule_of_route(route: str) -> str:
    """The policy rule a recorded route names: `short-tasks+score` and `short-tasks+budget-downgrade` are the rule
    `short-tasks`; `score` and `direct` name none ("")."""
    rule = route.split("+", 1)[0]
    return "" if rule in NO_RULE_ROUTES else rule


@dataclass(frozen=True, slots=True)
class Agreement:
    """How many evaluations of a group agreed with their reference, of how many."""

    agreeing: int
    samples: int
    group: dict[str, str] = field(default_factory=dict)

    @property
    def rate(self) -> Decimal | None:
        if not self.samples:
            return None
        return (Decimal(self.agreeing) / self.samples).quantize(RATE_PLACES, rounding=ROUND_HALF_EVEN)

    @property
    def lower(self) -> Decimal | None:
        if not self.samples:
            return None
        return wilson_interval(self.agreeing, self.samples)[0].quantize(RATE_PLACES, rounding=ROUND_FLOOR)

    @property
    def upper(self) -> Decimal | None:
        if not self.samples:
            return None
        return wilson_interval(self.agreeing, self.samples)[1].quantize(RATE_PLACES, rounding=ROUND_CEILING)

    @property
    def rate_percent(self) -> str:
        return "–" if self.rate is None else f"{_percent(self.rate, ROUND_HALF_EVEN)}%"

    @property
    def lower_percent(self) -> str:
        return "–" if self.lower is None else f"{_percent(self.lower, ROUND_FLOOR)}%"

    @property
    def upper_percent(self) -> str:
        return "–" if self.upper is None else f"{_percent(self.upper, ROUND_CEILING)}%"

    def __add__(self, other: "Agreement") -> "Agreement":
        return Agreement(self.agreeing + other.agreeing, self.samples + other.samples, self.group)

    def describe(self) -> str:
        """Rate, interval and count (`96.0% (93.1-97.8%, n=180)`, with an en dash), or that there are none."""
        if not self.samples:
            return "no shadow results"
        return f"{self.rate_percent} ({self.lower_percent[:-1]}–{self.upper_percent}, n={self.samples})"

    def as_json(self) -> dict:
        """Rates as decimal strings to four places (null without samples)."""
        return {
            **self.group,
            "samples": self.samples,
            "agreeing": self.agreeing,
            "agreement": _text(self.rate),
            "lower_bound": _text(self.lower),
            "upper_bound": _text(self.upper),
        }


def _text(rate: Decimal | None) -> str | None:
    return None if rate is None else f"{rate:f}"


def _percent(rate: Decimal, rounding: str) -> str:
    """A rate as a percentage to one place, rounded the way that keeps a bound a bound."""
    return f"{(rate * 100).quantize(Decimal('0.1'), rounding=rounding):f}"


def rule_filter(rule: str) -> Q:
    """Evaluations of a rule, whatever the score or a budget downgrade added to its route."""
    return Q(rule=rule) | Q(rule__startswith=f"{rule}+")


def shadow_evaluations(
    *,
    tenant_id: int,
    start: datetime,
    end: datetime,
    lever: str = "",
    rule: str = "",
    requests: QuerySet[UsageRecord] | None = None,
) -> QuerySet[ShadowEvaluation]:
    """The tenant's evaluations in [start, end), of one lever and one rule when named, and of the sampled `requests`
    (ledger rows) when given; fails closed without a tenant."""
    if lever and lever not in Lever.values:
        raise ValueError(f"unknown lever {lever!r}")
    rows = ShadowEvaluation.objects.for_tenant(tenant_id).filter(created_at__gte=start, created_at__lt=end)
    if lever:
        rows = rows.filter(lever=lever)
    if rule:
        rows = rows.filter(rule_filter(rule))
    if requests is not None:
        rows = rows.filter(request_id__in=requests.values("request_id"))
    return rows


def reference_models_by_rule(
    *, tenant_id: int, start: datetime, end: datetime, lever: str, rule: str = ""
) -> dict[str, frozenset[str]]:
    """By rule (its routes merged, as rule_of_route names them), the models its evaluations in [start, end) were
    judged against."""
    found: dict[str, set[str]] = {}
    rows = shadow_evaluations(tenant_id=tenant_id, start=start, end=end, lever=lever, rule=rule)
    for route, model in rows.values_list("rule", "reference_model").distinct().order_by():
        found.setdefault(rule_of_route(route), set()).add(model)
    return {name: frozenset(models) for name, models in found.items()}


def agreement_by(
    *,
    tenant_id: int,
    start: datetime,
    end: datetime,
    group_by: Sequence[str] = ("lever",),
    lever: str = "",
    rule: str = "",
    requests: QuerySet[UsageRecord] | None = None,
) -> list[Agreement]:
    """Agreement per group of evaluations in [start, end), grouped by any of GROUPINGS (none: one group of all),
    ordered by the groups; only groups with evaluations. By rule, a rule's routes are one group (rule_of_route:
    `short-tasks+score` and `short-tasks+budget-downgrade` are `short-tasks`, and `score` and `direct` are "", no
    rule), as an SLO on the rule and the what-if count them."""
    unknown = [name for name in group_by if name not in GROUPINGS]
    if unknown:
        raise ValueError(f"unknown grouping {', '.join(unknown)}; use any of {', '.join(GROUPINGS)}")
    names = list(dict.fromkeys(group_by))
    rows = shadow_evaluations(tenant_id=tenant_id, start=start, end=end, lever=lever, rule=rule, requests=requests)
    if not names:
        totals = rows.aggregate(samples=Count("pk"), agreeing=Count("pk", filter=Q(agrees=True)))
        return [Agreement(totals["agreeing"], totals["samples"])] if totals["samples"] else []
    grouped = rows.values(*names).annotate(samples=Count("pk"), agreeing=Count("pk", filter=Q(agrees=True)))
    merged: dict[tuple[str, ...], Agreement] = {}
    for row in grouped.order_by():
        group = {name: rule_of_route(row[name]) if name == "rule" else row[name] for name in names}
        key = tuple(group.values())
        merged[key] = merged.get(key, Agreement(0, 0, group)) + Agreement(row["agreeing"], row["samples"])
    return [merged[key] for key in sorted(merged)]


def agreement_by_lever(
    *, tenant_id: int, start: datetime, end: datetime, requests: QuerySet[UsageRecord] | None = None
) -> dict[str, Agreement]:
    """Every lever's agreement in [start, end), in the levers' order; no samples for a lever without evaluations."""
    found = {
        row.group["lever"]: row for row in agreement_by(tenant_id=tenant_id, start=start, end=end, requests=requests)
    }
    return {lever: found.get(lever, Agreement(0, 0, {"lever": lever})) for lever in Lever.values}


def agreement_of(*, tenant_id: int, start: datetime, end: datetime, lever: str, rule: str = "") -> Agreement:
    """One lever's agreement (one rule's, when named) in [start, end); no samples when there were no evaluations."""
    found = agreement_by(tenant_id=tenant_id, start=start, end=end, group_by=(), lever=lever, rule=rule)
    return found[0] if found else Agreement(0, 0)


def evaluation_spend_usd(
    *, tenant: Tenant, since: date, until: date, requests: QuerySet[UsageRecord] | None = None
) -> Decimal:
    """What the tenant's evaluation calls cost from the start of `since` to the end of `until` (tenant time zone).

    Read from the ledger's rows of kind `evaluation`, not from ShadowEvaluation.cost_usd: the ledger has every call
    the evaluations made and was charged for, the judge's included and those of an evaluation that ended without a
    verdict, so this figure reconciles with the ledger (and the provider's invoice) as every other spend does. With
    `requests` (ledger rows), the calls made for those requests only."""
    rows = ledger_between(tenant=tenant, since=since, until=until).filter(kind=UsageKind.EVALUATION)
    if requests is not None:
        rows = rows.filter(parent_request_id__in=requests.values("request_id"))
    return rows.aggregate(total=Sum("cost_usd"))["total"] or ZERO_USD


def quality_report(
    *,
    tenant: Tenant,
    since: date,
    until: date,
    group_by: Sequence[str] = ("lever",),
    requests: QuerySet[UsageRecord] | None = None,
) -> dict:
    """The usage API's `quality` block: agreement by lever (every lever) and by `group_by`, over the days (tenant time
    zone), and the evaluation spend; rates and money as decimal strings. With `requests` (the ledger's requests the
    page's filters select), the evaluations of those requests and the calls made for them only."""
    start, end = tenant_days_bounds(tenant=tenant, since=since, until=until)
    window = {"tenant_id": tenant.pk, "start": start, "end": end, "requests": requests}
    spend = evaluation_spend_usd(tenant=tenant, since=since, until=until, requests=requests)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "group_by": list(group_by),
        "by_lever": [row.as_json() for row in agreement_by_lever(**window).values()],
        "groups": [row.as_json() for row in agreement_by(**window, group_by=group_by)],
        "evaluation_spend_usd": format_cost(spend),
    }
