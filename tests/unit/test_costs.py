from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing.ledger.costs import LEDGER_QUANTUM, Usage, format_cost, provider_cache_saving, routing_saving, usage_cost
from billing.ledger.events import UsageEvent
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


def test_the_routing_saving_is_the_switch_of_model_on_tokens_the_providers_cache_did_not_touch():
    haiku = ModelPrices(Decimal("0.80"), Decimal("0.08"), Decimal("4.00"), Decimal("1.00"))
    # 10,000 prompt tokens of which 8,000 read from the provider's cache, 100 output tokens, served by Haiku instead of
    # Sonnet: 10,000 x (3.00 - 0.80) + 100 x (15.00 - 4.00) per million; the cache's part is Haiku's own.
    usage = Usage(prompt_tokens=10_000, cached_tokens=8_000, completion_tokens=100)

    assert routing_saving(usage, served=haiku, baseline=CLAUDE_SONNET) == Decimal("0.0231")
    assert provider_cache_saving(usage, cost=usage.cost(haiku), prices=haiku) == Decimal("0.00576")
    assert routing_saving(usage, served=haiku, baseline=None) == 0


def premium_cost_without_cache(*, prompt: int, completion: int, premium: tuple[Decimal, ...]) -> Decimal:
    """The documented baseline, computed apart from billing.ledger.costs: the premium model, every prompt token at its
    input price, to the ledger's quantum."""
    exact = (prompt * premium[0] + completion * premium[2]) / Decimal(1_000_000)
    return exact.quantize(Decimal("1e-10"), rounding=ROUND_HALF_EVEN)


price_lists = st.tuples(*[st.decimals(min_value=0, max_value=100, places=6) for _ in range(4)])


@given(
    prompt=st.integers(0, 2_000_000),
    data=st.data(),
    completion=st.integers(0, 200_000),
    premium=price_lists,
    served=st.none() | price_lists,
    batch_multiplier=st.none() | st.decimals(min_value=0, max_value=1, places=2),
)
def test_the_cost_and_every_levers_saving_add_up_to_the_premium_model_without_the_providers_cache(
    prompt, data, completion, premium, served, batch_multiplier
):
    writes = data.draw(st.integers(0, prompt))
    event = UsageEvent(
        request_id="req-1",
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        tenant_id=1,
        team_id=1,
        api_key_id=1,
        http_status=200,
        prompt_tokens=prompt,
        cached_tokens=data.draw(st.integers(0, prompt - writes)),
        cache_write_tokens=writes,
        completion_tokens=completion,
    )
    # Served by the premium model itself (no routing), or routed to another.
    event.price(
        ModelPrices(*(served or premium)), routing_baseline=ModelPrices(*premium) if served is not None else None
    )
    if batch_multiplier is not None:
        event.batch_discount(multiplier=batch_multiplier)

    levers = event.saved_routing_usd + event.saved_provider_cache_usd + event.saved_batch_usd
    assert event.cost_usd + levers == premium_cost_without_cache(prompt=prompt, completion=completion, premium=premium)
