"""Cost of a request from the usage the provider returned.

Prices are USD per million tokens. Cached input tokens are part of prompt_tokens (as OpenAI
reports them) and are charged at the cached price instead of the input price. The ledger
keeps 10 decimal places, rounded half-even; reports round only at display and export.
"""

from decimal import ROUND_HALF_EVEN, Decimal

from routing.catalog import ModelPrices

LEDGER_QUANTUM = Decimal("0.0000000001")
ONE_MILLION = Decimal(1_000_000)


def usage_cost(*, prices: ModelPrices, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> Decimal:
    cached = min(cached_tokens, prompt_tokens)
    uncached = prompt_tokens - cached
    cost = (
        uncached * prices.input_per_million
        + cached * prices.cached_input_per_million
        + completion_tokens * prices.output_per_million
    ) / ONE_MILLION
    return cost.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN)


def format_cost(cost: Decimal) -> str:
    """The ledger's full precision as a plain decimal string, e.g. 0.0000123450."""
    return f"{cost.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN):f}"
