from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing.ledger.costs import LEDGER_QUANTUM, Usage, format_cost, provider_cache_saving, usage_cost
from routing.catalog import ModelPrices

GPT_4O = ModelPrices(Decimal("2.50"), Decimal("1.25"), Decimal("10.00"))
GPT_4O_MINI = ModelPrices(Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))


def test_cached_tokens_are_charged_at_their_own_price():
    # 2,000 prompt tokens of which 1,536 cached, 300 completion tokens on gpt-4o prices:
    # 464 * 2.50/1M + 1,536 * 1.25/1M + 300 * 10.00/1M = 0.00116 + 0.00192 + 0.003
    cost = usage_cost(prices=GPT_4O, prompt_tokens=2_000, cached_tokens=1_536, completion_tokens=300)

    assert cost == Decimal("0.0060800000")


def test_small_costs_keep_ten_places():
    cost = usage_cost(prices=GPT_4O_MINI, prompt_tokens=11, cached_tokens=0, completion_tokens=24)

    assert cost == Decimal("0.0000160500")
    assert format_cost(cost) == "0.0000160500"


def test_cached_tokens_never_exceed_the_prompt():
    capped = usage_cost(prices=GPT_4O, prompt_tokens=100, cached_tokens=500, completion_tokens=0)

    assert capped == usage_cost(prices=GPT_4O, prompt_tokens=100, cached_tokens=100, completion_tokens=0)


@given(
    prompt=st.integers(0, 2_000_000),
    cached_share=st.floats(0, 1),
    completion=st.integers(0, 200_000),
    prices=st.tuples(*[st.decimals(min_value=0, max_value=100, places=6) for _ in range(3)]),
)
def test_cost_is_exact_to_the_ledger_quantum(prompt, cached_share, completion, prices):
    cached = int(prompt * cached_share)
    model_prices = ModelPrices(*prices)

    cost = usage_cost(prices=model_prices, prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion)

    exact = ((prompt - cached) * prices[0] + cached * prices[1] + completion * prices[2]) / Decimal(1_000_000)
    assert cost.as_tuple().exponent == LEDGER_QUANTUM.as_tuple().exponent
    assert abs(cost - exact) <= LEDGER_QUANTUM / 2


def test_anthropic_cache_writes_are_charged_at_their_own_price():
    # Claude 3.5 Sonnet prices: input 3.00, cache read 0.30, cache write 3.75, output 15.00 per 1M.
    sonnet = ModelPrices(Decimal("3.00"), Decimal("0.30"), Decimal("15.00"), Decimal("3.75"))
    # 3,000 prompt tokens = 1,000 uncached + 1,500 cache reads + 500 cache writes.
    cost = usage_cost(
        prices=sonnet, prompt_tokens=3_000, cached_tokens=1_500, cache_write_tokens=500, completion_tokens=200
    )

    assert cost == Decimal("0.0083250000")


def test_cache_writes_default_to_the_input_price():
    cost = usage_cost(
        prices=GPT_4O, prompt_tokens=1_000, cached_tokens=0, cache_write_tokens=1_000, completion_tokens=0
    )

    assert cost == usage_cost(prices=GPT_4O, prompt_tokens=1_000, cached_tokens=0, completion_tokens=0)


CLAUDE_SONNET = ModelPrices(Decimal("3.00"), Decimal("0.30"), Decimal("15.00"), Decimal("3.75"))


def test_provider_cache_reads_save_and_writes_cost_against_the_input_price():
    written = Usage(prompt_tokens=2_100, cache_write_tokens=2_000, completion_tokens=40)
    read = Usage(prompt_tokens=2_100, cached_tokens=2_000, completion_tokens=40)

    # 2,000 tokens written at 3.75 instead of 3.00 per million; then read at 0.30 instead of 3.00.
    assert provider_cache_saving(written, cost=written.cost(CLAUDE_SONNET), prices=CLAUDE_SONNET) == Decimal("-0.0015")
    assert provider_cache_saving(read, cost=read.cost(CLAUDE_SONNET), prices=CLAUDE_SONNET) == Decimal("0.0054")
    plain = Usage(prompt_tokens=2_100, completion_tokens=40)
    assert provider_cache_saving(plain, cost=plain.cost(CLAUDE_SONNET), prices=CLAUDE_SONNET) == 0


@given(
    prompt=st.integers(0, 2_000_000),
    data=st.data(),
    completion=st.integers(0, 200_000),
    prices=st.tuples(*[st.decimals(min_value=0, max_value=100, places=6) for _ in range(4)]),
)
def test_cost_plus_the_provider_cache_saving_is_the_cost_without_the_cache(prompt, data, completion, prices):
    writes = data.draw(st.integers(0, prompt))
    usage = Usage(
        prompt_tokens=prompt,
        cached_tokens=data.draw(st.integers(0, prompt - writes)),
        cache_write_tokens=writes,
        completion_tokens=completion,
    )
    model_prices = ModelPrices(*prices)
    cost = usage.cost(model_prices)

    saving = provider_cache_saving(usage, cost=cost, prices=model_prices)

    without_cache = usage_cost(prices=model_prices, prompt_tokens=prompt, cached_tokens=0, completion_tokens=completion)
    assert cost + saving == without_cache
