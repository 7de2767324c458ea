"""What reports add up over ledger rows, defined once.

`ledger_aggregates` gives each total as an ORM aggregate, for a query over the ledger (exports, the usage summary
and API, statements, rollups, anomalies); `LedgerTotals` holds them in Python, where sums are added up further
(rollup rows on the dashboard, hours of traffic for anomalies, the lines of a statement).

`requests`, the error counts and the latency sum count requests only; tokens, cost and savings include the calls
the gateway made for them (compression summaries), so the totals of any grouping sum to the ledger's.
"""

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal

from django.db.models import Aggregate, BigIntegerField, Count, DecimalField, Q, Sum, Value
from django.db.models.functions import Coalesce

from billing.ledger.costs import ZERO_USD
from billing.models import COST_FIELD, REQUEST_ROWS, CacheStatus

CACHE_HIT_STATUSES = (CacheStatus.HIT_EXACT, CacheStatus.HIT_SEMANTIC)
SAVINGS_LEVERS = ("cache", "routing", "compression", "batch", "provider_cache")


@dataclass(slots=True)
class LedgerTotals:
    requests: int = 0
    errors: int = 0  # requests answered with HTTP status ≥ 400
    upstream_errors: int = 0  # ≥ 500
    cache_hits: int = 0  # exact and semantic
    routed_to_large: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = ZERO_USD
    saved_cache_usd: Decimal = ZERO_USD
    saved_routing_usd: Decimal = ZERO_USD
    saved_compression_usd: Decimal = ZERO_USD
    saved_batch_usd: Decimal = ZERO_USD
    saved_provider_cache_usd: Decimal = ZERO_USD
    latency_sum_ms: int = 0

    @classmethod
    def of(cls, source: Mapping | object) -> "LedgerTotals":
        """From a row of ledger aggregates (a dict) or a rollup row (attributes); a total it lacks is 0."""
        get = source.get if isinstance(source, Mapping) else lambda name: getattr(source, name, None)
        return cls(**{name: value for name in TOTALS if (value := get(name)) is not None})

    def add(self, other: "LedgerTotals | object") -> None:
        """Add another's totals, a LedgerTotals or anything with the same attributes (a rollup row)."""
        for name in TOTALS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def savings_by_lever(self) -> dict[str, Decimal]:
        return {lever: getattr(self, f"saved_{lever}_usd") for lever in SAVINGS_LEVERS}

    @property
    def saved_usd(self) -> Decimal:
        return sum(self.savings_by_lever.values(), ZERO_USD)

    @property
    def baseline_usd(self) -> Decimal:
        """What the requests would have cost on the premium model with no cache (the gateway's or the provider's),
        compression or batch discount."""
        return self.cost_usd + self.saved_usd


TOTALS = tuple(field.name for field in fields(LedgerTotals))


def _sum_or_zero(field_name: str) -> Coalesce:
    return Coalesce(Sum(field_name), Value(ZERO_USD), output_field=DecimalField(**COST_FIELD))


def ledger_aggregates(*names: str) -> dict[str, Aggregate]:
    """The named totals (every one of TOTALS when none is named) as aggregates over ledger rows, for annotate() or
    aggregate(). ``cache_write_tokens`` is one the exports and the usage API add up, and the rollups do not hold."""
    aggregates = {
        "requests": Count("id", filter=REQUEST_ROWS),
        "errors": Count("id", filter=REQUEST_ROWS & Q(http_status__gte=400)),
        "upstream_errors": Count("id", filter=REQUEST_ROWS & Q(http_status__gte=500)),
        "cache_hits": Count("id", filter=Q(cache_status__in=CACHE_HIT_STATUSES)),
        "routed_to_large": Count("id", filter=Q(routed_to_large=True)),
        "prompt_tokens": Sum("prompt_tokens"),
        "cached_tokens": Sum("cached_tokens"),
        "cache_write_tokens": Sum("cache_write_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "cost_usd": Sum("cost_usd"),
        **{f"saved_{lever}_usd": _sum_or_zero(f"saved_{lever}_usd") for lever in SAVINGS_LEVERS},
        # Of requests, as `requests` is: a call made for one (a failed attempt, a summary, a cache embedding) has a
        # latency of its own, often near zero, that is no request's.
        "latency_sum_ms": Coalesce(Sum("total_latency_ms", filter=REQUEST_ROWS), 0, output_field=BigIntegerField()),
    }
    return {name: aggregates[name] for name in names or TOTALS}
