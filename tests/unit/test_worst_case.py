"""The worst case a budget reserves: every choice, the model's maximum output, the dearest model of the chain;
the max_tokens a refusal offers; and the parameters whose cost no budget could bound."""

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.budgets.index import BudgetEntry
from billing.budgets.periods import budget_window
from billing.budgets.reservations import BudgetExceeded, usd_to_units
from billing.ledger.costs import usage_cost
from llmops.gateway.chat.validation import validate_chat_request
from llmops.gateway.chat.worst_case import (
    OutputBound,
    budget_refusal,
    cache_writers,
    chain_worst_case,
    fitting_max_tokens,
)
from llmops.gateway.errors import GatewayError
from routing.catalog import ModelEntry, ModelPrices, ProviderEntry
from routing.providers import prompt_cache

PROVIDER = ProviderEntry(name="p", kind="openai", base_url="http://127.0.0.1:9", api_key="", timeout_seconds=1)
SMALL = ModelPrices(Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))
LARGE = ModelPrices(Decimal("2.50"), Decimal("1.25"), Decimal("10.00"))
FALLBACK = 4096
NOW = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)


def model(name: str, prices: ModelPrices = SMALL, max_output: int | None = None) -> ModelEntry:
    return ModelEntry(
        name=name, upstream_name="gpt-4o-mini", provider=PROVIDER, prices=prices, context_window=128_000,
        max_output_tokens=max_output,
    )  # fmt: skip


prices = st.tuples(*[st.decimals(min_value=0, max_value=100, places=6) for _ in range(3)]).map(
    lambda three: ModelPrices(*three)
)


@given(
    prompt=st.integers(0, 500_000),
    choices=st.integers(1, 128),
    max_tokens=st.integers(1, 100_000),
    chain_prices=st.lists(prices, min_size=1, max_size=4),
    generated=st.data(),
)
def test_no_bill_the_upstream_may_send_exceeds_the_worst_case(prompt, choices, max_tokens, chain_prices, generated):
    chain = [model(f"m{i}", p) for i, p in enumerate(chain_prices)]
    bound = OutputBound(max_tokens=max_tokens, choices=choices)
    worst = chain_worst_case(chain, prompt_tokens=prompt, bound=bound, fallback=FALLBACK)

    served = generated.draw(st.sampled_from(chain))
    completion = generated.draw(st.integers(0, choices * max_tokens))
    billed = usage_cost(prices=served.prices, prompt_tokens=prompt, cached_tokens=0, completion_tokens=completion)

    assert billed <= worst
    # ...and the bill of every choice running to max_tokens on the dearest model is exactly the worst case.
    assert worst == max(
        usage_cost(prices=m.prices, prompt_tokens=prompt, cached_tokens=0, completion_tokens=choices * max_tokens)
        for m in chain
    )


@given(
    prompt=st.integers(0, 500_000),
    max_tokens=st.integers(1, 100_000),
    input_price=st.decimals(min_value=0, max_value=100, places=6),
    split=st.data(),
)
def test_a_prompt_the_provider_may_write_to_its_cache_is_reserved_at_the_write_price(
    prompt, max_tokens, input_price, split
):
    """Claude bills a cache write at 1.25x the input price: whatever part of the prompt is written to or read from the
    cache, the bill stays within the worst case of a model that may write (and would not, at the input price)."""
    claude = model("claude", ModelPrices(input_price, input_price / 10, input_price * 5, input_price * Decimal("1.25")))
    writes = split.draw(st.integers(0, prompt))
    reads = split.draw(st.integers(0, prompt - writes))
    billed = usage_cost(
        prices=claude.prices,
        prompt_tokens=prompt,
        cached_tokens=reads,
        cache_write_tokens=writes,
        completion_tokens=max_tokens,
    )

    worst = chain_worst_case(
        [claude], prompt_tokens=prompt, bound=OutputBound(max_tokens), fallback=FALLBACK, cache_writers={"claude"}
    )

    assert billed <= worst
    # ...and writing the whole prompt is exactly the worst case, which the input price alone would not cover.
    assert worst == usage_cost(
        prices=claude.prices,
        prompt_tokens=prompt,
        cached_tokens=0,
        cache_write_tokens=prompt,
        completion_tokens=max_tokens,
    )
    at_input_price = chain_worst_case([claude], prompt_tokens=prompt, bound=OutputBound(max_tokens), fallback=FALLBACK)
    assert at_input_price <= worst


ANTHROPIC = ProviderEntry(name="a", kind="anthropic", base_url="http://127.0.0.1:9", api_key="", timeout_seconds=1)
SONNET_PRICES = ModelPrices(Decimal("3.00"), Decimal("0.30"), Decimal("15.00"), Decimal("3.75"))
LONG_PROMPT = {
    "model": "claude",
    "messages": [{"role": "system", "content": "Policy. " * 500}, {"role": "user", "content": "Hi"}],
}
MARKED_PART = {"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}


def claude(prices: ModelPrices) -> ModelEntry:
    return ModelEntry(
        name="claude", upstream_name="claude-sonnet-4-5", provider=ANTHROPIC, prices=prices, context_window=200_000
    )


@pytest.mark.parametrize(
    ("prices", "marked"),
    [
        (SONNET_PRICES, True),
        # A version saved before the catalog had cache prices: writes would be charged at the input price, a quarter
        # under the provider's bill, so the gateway sets no checkpoint (a client's own are still sent, below).
        (SONNET_PRICES._replace(cache_write_per_million=None), False),
        (SONNET_PRICES._replace(cached_input_per_million=Decimal("3.00")), False),
    ],
)
def test_the_gateway_marks_prompts_only_for_a_model_whose_cache_the_catalog_prices(prices, marked):
    model_entry = claude(prices)

    assert (prompt_cache.effective_provider_cache("auto", prices=prices) == "auto") is marked
    assert (cache_writers([model_entry], LONG_PROMPT, provider_cache="auto") == {"claude"}) is marked
    client_marked = {"model": "claude", "messages": [{"role": "user", "content": [MARKED_PART]}]}
    assert cache_writers([model_entry], client_marked, provider_cache="off") == {"claude"}


def test_n_multiplies_the_output_and_the_prompt_is_billed_once():
    one = chain_worst_case([model("s")], prompt_tokens=1_000, bound=OutputBound(100), fallback=FALLBACK)
    many = chain_worst_case([model("s")], prompt_tokens=1_000, bound=OutputBound(100, choices=128), fallback=FALLBACK)

    # 1,000 * 0.15/1M + 100 * 0.60/1M, then with 128 * 100 completion tokens.
    assert (one, many) == (Decimal("0.00021"), Decimal("0.00783"))


def test_without_max_tokens_the_models_maximum_output_is_reserved_else_the_setting():
    known, unknown = model("known", max_output=16_384), model("unknown")
    bound = OutputBound(max_tokens=None, choices=2)

    assert bound.completion_tokens(known, fallback=FALLBACK) == 2 * 16_384
    assert bound.completion_tokens(unknown, fallback=FALLBACK) == 2 * FALLBACK
    # A max_tokens over what the model can produce bills no more than the model's maximum.
    assert OutputBound(max_tokens=50_000).completion_tokens(known, fallback=FALLBACK) == 16_384


def test_n_best_of_and_prediction_are_read_from_the_body():
    body = {"n": 3, "best_of": 5, "max_completion_tokens": 40, "prediction": {"content": "hello world"}}

    bound = OutputBound.of(body, model="gpt-4o-mini")

    assert (bound.max_tokens, bound.choices, bound.predicted_tokens) == (40, 5, 2)
    assert bound.completion_tokens(model("s"), fallback=FALLBACK) == 5 * (40 + 2)
    assert OutputBound.of({"messages": []}, model="gpt-4o-mini") == OutputBound(max_tokens=None)


@given(
    prompt=st.integers(0, 200_000),
    choices=st.integers(1, 128),
    max_tokens=st.integers(2, 50_000),
    available=st.decimals(min_value=0, max_value=5, places=10),
)
def test_the_max_tokens_a_refusal_offers_is_the_largest_that_fits(prompt, choices, max_tokens, available):
    chain = [model("small"), model("large", LARGE, max_output=30_000)]
    bound = OutputBound(max_tokens=max_tokens, choices=choices)

    fitting = fitting_max_tokens(chain, prompt_tokens=prompt, bound=bound, fallback=FALLBACK, available=available)

    def worst(m: int) -> Decimal:
        return chain_worst_case(chain, prompt_tokens=prompt, bound=OutputBound(m, choices), fallback=FALLBACK)

    if fitting is None:
        assert worst(1) > available or max_tokens == 1
    else:
        assert 1 <= fitting < max_tokens
        assert worst(fitting) <= available
        assert fitting == max_tokens - 1 or worst(fitting + 1) > available


def exceeded(*, limit: str, spent: str, reserved: str, requested: str) -> BudgetExceeded:
    entry = BudgetEntry(
        budget_id=7, tenant_id=1, scope="key", team_id=None, key_id=3, model_name="", period="day",
        limit_usd=Decimal(limit), thresholds=(80, 100), action="block", zone=ZoneInfo("UTC"), version=1,
    )  # fmt: skip
    return BudgetExceeded(
        entry=entry,
        window=budget_window(period="day", zone=ZoneInfo("UTC"), now=NOW),
        now=NOW,
        spent_units=usd_to_units(Decimal(spent)),
        reserved_units=usd_to_units(Decimal(reserved)),
        requested_units=usd_to_units(Decimal(requested)),
    )


def test_a_refusal_of_a_spent_budget_says_it_is_spent():
    error = budget_refusal(exceeded(limit="0.01", spent="0.0100123", reserved="0", requested="0.0003"))

    assert error.status_code == 429 and error.code == "budget_exceeded"
    assert error.message == (
        "Budget 7 (key, day 2026-12-04) of $0.01 is used up: $0.0100123000 spent. "
        "It resets at 2026-12-05T00:00:00+00:00."
    )
    assert error.headers["Retry-After"] == str(9 * 3600)


def test_a_refusal_of_a_worst_case_that_does_not_fit_gives_both_figures_and_the_max_tokens_that_fits():
    refused = exceeded(limit="0.01", spent="0.0089", reserved="0.0001", requested="1.15")

    error = budget_refusal(refused, fitting=37, choices=128)

    assert error.message == (
        "Budget 7 (key, day 2026-12-04) of $0.01 cannot hold this request's worst case of $1.1500000000: "
        "$0.0089000000 spent, $0.0001000000 reserved by requests in flight, $0.0010000000 remains. "
        "It resets at 2026-12-05T00:00:00+00:00. With max_tokens=37 per choice (128 choices) it would fit."
    )
    none_fits = budget_refusal(refused, fitting=None, choices=1).message
    assert none_fits.endswith("No max_tokens would fit; send a shorter prompt.")
    with_images = budget_refusal(refused, fitting=None, choices=1, has_media=True).message
    assert with_images.endswith("No max_tokens would fit; send a shorter prompt or fewer images or files.")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"service_tier": "fast"}, "service_tier"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "original"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url.detail",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}],
                    }
                ]
            },
            "messages[0].content[0].type",
        ),
        ({"best_of": 129}, "best_of"),
        ({"n": 0}, "n"),
    ],
)
def test_parameters_whose_cost_cannot_be_bounded_are_refused(extra, param):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}

    with pytest.raises(GatewayError) as refused:
        validate_chat_request(body)

    assert (refused.value.status_code, refused.value.param) == (400, param)


@pytest.mark.parametrize("extra", [{"service_tier": "fast"}, {"service_tier": "priority"}])
def test_a_tier_billed_above_the_catalog_is_unsupported_not_an_invalid_value(extra):
    with pytest.raises(GatewayError) as refused:
        validate_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})

    assert refused.value.code == "unsupported_parameter"


def test_an_image_at_its_original_resolution_is_unsupported_not_an_invalid_value():
    image = {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "original"}}

    with pytest.raises(GatewayError) as refused:
        validate_chat_request({"model": "m", "messages": [{"role": "user", "content": [image]}]})

    assert refused.value.code == "unsupported_parameter"
    assert "original resolution" in refused.value.message
