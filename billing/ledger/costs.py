"""Cost of a request from the usage the provider returned, and what each cost lever saved.

Prices are USD per million tokens. Cached input tokens (cache reads) and cache-write tokens
(Anthropic's cache creation) are part of prompt_tokens, as the gateway reports usage, and are
charged at the cached price and the cache-write price (the input price when unset) instead of
the input price. The ledger keeps 10 decimal places, rounded half-even; reports round only at display and export.

The savings of a request answered upstream add up: its cost, plus the batch discount, the provider cache's saving
and the routing saving, is what its tokens would have cost on the premium model with nothing read from or written to
the provider's prompt cache, to the ledger's quantum. Compression's saving (removed tokens at the served model's input
price) and a response-cache hit's (the stored answer at the served model's prices) are the conservative definitions
docs/finance.md states.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from routing.catalog import ModelPrices
from routing.tokens import proportional_split

LEDGER_QUANTUM = Decimal("0.0000000001")
# The endpoint a batch line's ledger row names, whether the gateway ran it or the provider's batch endpoint did: its
# discount, if any, reads as the batch endpoint's (a line the gateway ran at the flex tier is not told apart).
BATCH_ENDPOINT = "/v1/batches"
ONE_MILLION = Decimal(1_000_000)
ZERO_USD = Decimal(0)


def usage_cost(
    *, prices: ModelPrices, prompt_tokens: int, cached_tokens: int, completion_tokens: int, cache_write_tokens: int = 0
) -> Decimal:
    cached = min(cached_tokens, prompt_tokens)
    cache_writes = min(cache_write_tokens, prompt_tokens - cached)
    uncached = prompt_tokens - cached - cache_writes
    cache_write_price = prices.cache_write_per_million
    if cache_write_price is None:
        cache_write_price = prices.input_per_million
    cost = (
        uncached * prices.input_per_million
        + cached * prices.cached_input_per_million
        + cache_writes * cache_write_price
        + completion_tokens * prices.output_per_million
    ) / ONE_MILLION
    return cost.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN)


@dataclass(slots=True)
class Usage:
    """The tokens of one answer, as the provider reported them (or, when ``estimated``, as the gateway counted)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @classmethod
    def from_provider(cls, usage: dict) -> "Usage":
        """From a usage object the adapter checked (``routing.providers.base.checked_usage``)."""
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            cache_write_tokens=int(details.get("cache_write_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def cost(self, prices: ModelPrices) -> Decimal:
        return usage_cost(
            prices=prices,
            prompt_tokens=self.prompt_tokens,
            cached_tokens=self.cached_tokens,
            completion_tokens=self.completion_tokens,
            cache_write_tokens=self.cache_write_tokens,
        )


def uncached_cost(usage: Usage, prices: ModelPrices) -> Decimal:
    """What the tokens would cost with none read from or written to the provider's prompt cache: every prompt token at
    the input price."""
    return usage_cost(
        prices=prices, prompt_tokens=usage.prompt_tokens, cached_tokens=0, completion_tokens=usage.completion_tokens
    )


def routing_saving(usage: Usage, *, served: ModelPrices, baseline: ModelPrices | None) -> Decimal:
    """What the same tokens, none read from or written to the provider's prompt cache, would have cost on the model
    the request would have used without routing (the one it named, or its alias's large model), minus what they cost
    so on the served model: the switch of model alone, the provider cache's saving being the served model's
    (``provider_cache_saving``), so the cost and both savings add up to the premium model's cost without the cache.
    Negative where routing chose a dearer model; nothing when routing kept the request on that model (no
    ``baseline``)."""
    if baseline is None:
        return ZERO_USD
    return uncached_cost(usage, baseline) - uncached_cost(usage, served)


def provider_cache_saving(usage: Usage, *, cost: Decimal, prices: ModelPrices) -> Decimal:
    """What the same tokens would have cost on the served model with none read from or written to the provider's
    prompt cache (every prompt token at the input price), minus what they cost (``cost``): the reads' discount less the
    writes' surcharge, so negative for a request that only wrote to the cache; nothing when it did neither."""
    return uncached_cost(usage, prices) - cost


def compression_saving(
    served: ModelPrices, *, tokens_before: int | None, tokens_after: int | None, summary_usd: Decimal = ZERO_USD
) -> Decimal:
    """The prompt tokens compression removed, at the served model's input price, minus what its summary calls cost
    (negative when the summary cost more than it saved)."""
    removed = ZERO_USD
    if tokens_before and tokens_after and tokens_after < tokens_before:
        removed = usage_cost(
            prices=served, prompt_tokens=tokens_before - tokens_after, cached_tokens=0, completion_tokens=0
        )
    return removed - summary_usd


def cost_split(cost: Decimal, *, weights: Sequence[int]) -> list[Decimal]:
    """A cost at the ledger's places (one call's) cut in proportion to ``weights`` (its payers' tokens) into parts at
    the same places that add up to it exactly: the last quanta go to the largest remainders (``proportional_split``)."""
    quanta = int(cost.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN) / LEDGER_QUANTUM)
    return [part * LEDGER_QUANTUM for part in proportional_split(quanta, weights)]


def batch_price(list_cost: Decimal, *, multiplier: Decimal) -> tuple[Decimal, Decimal]:
    """(charged, saved) for an answer of the provider's batch endpoint, charged ``multiplier`` of the list price."""
    charged = (list_cost * multiplier).quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN)
    return charged, list_cost - charged


CENT = Decimal("0.01")


def format_money(amount: Decimal) -> str:
    """Dollars for people (alerts, admin pages): cents, or for less than a cent as many places as show its first two
    significant digits (at most the ledger's 10), so a small amount never reads $0.00. Rounded half-even."""
    places = 2
    if amount and abs(amount) < CENT:
        places = min(1 - amount.adjusted(), 10)
    return f"${amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN):,f}"


def format_money_change(amount: Decimal) -> str:
    """A difference in dollars, signed: +$1.22, -$0.15, $0.00 (format_money's rounding)."""
    if amount < 0:
        return "-" + format_money(-amount)
    return ("+" if amount > 0 else "") + format_money(amount)


def format_cost(cost: Decimal) -> str:
    """The ledger's full precision as a plain decimal string, e.g. 0.0000123450."""
    return f"{cost.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN):f}"


def format_cents(amount: Decimal) -> str:
    """Rounded to cents, half to even (0.005 → 0.00, 0.015 → 0.02): the rule exports, statements and pages document."""
    return f"{amount.quantize(CENT, rounding=ROUND_HALF_EVEN):f}"
