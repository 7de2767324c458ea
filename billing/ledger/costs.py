"""Cost of a request from the usage the provider returned.

Prices are USD per million tokens. Cached input tokens (cache reads) and cache-write tokens
(Anthropic's cache creation) are part of prompt_tokens, as the gateway reports usage, and are
charged at the cached price and the cache-write price (the input price when unset) instead of
the input price. The ledger
keeps 10 decimal places, rounded half-even; reports round only at display and export.
"""

from decimal import ROUND_HALF_EVEN, Decimal

from routing.catalog import ModelPrices

LEDGER_QUANTUM = Decimal("0.0000000001")
ONE_MILLION = Decimal(1_000_000)


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


CENT = Decimal("0.01")


def format_money(amount: Decimal) -> str:
    """Dollars for people (alerts, admin pages): cents, or for less than a cent as many places as show its first two
    significant digits (at most the ledger's 10), so a small amount never reads $0.00. Rounded half-even."""
    places = 2
    if amount and abs(amount) < CENT:
        places = min(1 - amount.adjusted(), 10)
    return f"${amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN):,f}"


def format_cost(cost: Decimal) -> str:
    """The ledger's full precision as a plain decimal string, e.g. 0.0000123450."""
    return f"{cost.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN):f}"
