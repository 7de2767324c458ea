"""A chain's prompt is counted once, for its first model: a model of the chain that bills another count of the same
text (another encoding, or a tokenizer tiktoken does not know) has it reserved with PROMPT_MARGIN, and one that bills
the very count it was made in is reserved at that count."""

from decimal import Decimal

import pytest

from billing.ledger.costs import usage_cost
from llmops.gateway.chat.worst_case import OutputBound, chain_worst_case, fitting_max_tokens
from routing.catalog import ModelEntry, ModelPrices, ProviderEntry
from routing.tokens import count_chat_tokens, encoding_name_for, known_encoding_name

# An OpenAI-compatible server is of kind "openai" whatever model it runs.
OPENAI_COMPATIBLE = ProviderEntry(name="p", kind="openai", base_url="http://127.0.0.1:9", api_key="", timeout_seconds=1)
CHEAP = ModelPrices(Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))
DEAR = ModelPrices(Decimal("10.00"), Decimal("5.00"), Decimal("30.00"))
FALLBACK = 4096


def model(upstream_name: str, prices: ModelPrices = CHEAP) -> ModelEntry:
    return ModelEntry(
        name=upstream_name,
        upstream_name=upstream_name,
        provider=OPENAI_COMPATIBLE,
        prices=prices,
        context_window=128_000,
    )


def bill(model: ModelEntry, prompt_tokens: int, completion_tokens: int = 1) -> Decimal:
    return usage_cost(
        prices=model.prices, prompt_tokens=prompt_tokens, cached_tokens=0, completion_tokens=completion_tokens
    )


@pytest.mark.parametrize(
    ("served", "fallback", "reserved"),
    [
        ("gpt-4o", "gpt-4o-mini", 1000),  # both o200k_base
        ("gpt-4o", "ft:gpt-4o-mini:acme::abc123", 1000),  # a fine-tune bills its base model's encoding
        ("mock-small", "gpt-3.5-turbo", 1000),  # an unknown name is counted in cl100k_base, gpt-3.5's own
        ("llama-3.1-70b", "llama-3.1-70b", 1000),  # the model it was counted for, at another provider
        ("gpt-4o", "gpt-4-turbo", 1500),  # cl100k_base
        ("gpt-4-turbo", "gpt-4o", 1500),  # o200k_base
        ("gpt-4o", "meta-llama/Llama-3.1-70B-Instruct", 1500),  # a tokenizer tiktoken does not know
        ("gpt-4o", "mistral-large-latest", 1500),
    ],
)
def test_a_fallback_is_reserved_at_the_count_of_the_prompt_it_bills(served, fallback, reserved):
    chain = [model(served), model(fallback, DEAR)]

    worst = chain_worst_case(chain, prompt_tokens=1000, bound=OutputBound(1), fallback=FALLBACK)

    assert worst == bill(chain[1], reserved)


def test_the_first_model_of_the_chain_is_reserved_at_its_count_as_before():
    """The served model is the one the prompt was counted for, whether tiktoken knows its name or not."""
    for name in ("gpt-4o", "mock-small"):
        worst = chain_worst_case([model(name, DEAR)], prompt_tokens=1000, bound=OutputBound(1), fallback=FALLBACK)
        assert worst == bill(model(name, DEAR), 1000)


def test_a_gpt_4_turbo_fallback_of_gpt_4o_is_reserved_what_it_bills_for_a_japanese_prompt():
    """cl100k_base counts this text at about 1.4 times o200k_base: reserving gpt-4o's count for the fallback would
    let it bill past the reservation."""
    messages = [
        {"role": "user", "content": "日本語は主に日本で話されている言語であり、約一億二千万人の話者がいる。" * 20}
    ]
    served, fallback = model("gpt-4o"), model("gpt-4-turbo", DEAR)
    counted = count_chat_tokens(messages, model=served.upstream_name)
    billed_by_fallback = count_chat_tokens(messages, model=fallback.upstream_name)
    assert billed_by_fallback > counted

    worst = chain_worst_case([served, fallback], prompt_tokens=counted, bound=OutputBound(10), fallback=FALLBACK)

    assert bill(fallback, billed_by_fallback, 10) <= worst


@pytest.mark.parametrize(
    ("name", "encoding"),
    [
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("mock-small", None),
        ("meta-llama/Llama-3.1-70B-Instruct", None),
    ],
)
def test_only_a_model_tiktoken_knows_has_a_known_encoding(name, encoding):
    assert known_encoding_name(name) == encoding


def test_a_fallback_priced_alone_is_reserved_at_the_count_of_the_model_the_prompt_was_counted_for():
    """A chain of the fallback alone (a downgrade to it, a fallback weighed on its own) holds a prompt counted for the
    served model: named, it is reserved as it is in the whole chain, and so is the max_tokens a refusal offers."""
    fallback = model("gpt-4-turbo", DEAR)

    alone = chain_worst_case([fallback], prompt_tokens=1000, bound=OutputBound(1), fallback=FALLBACK)
    counted_for_gpt_4o = chain_worst_case(
        [fallback], prompt_tokens=1000, bound=OutputBound(1), fallback=FALLBACK, counted_for="gpt-4o"
    )

    assert alone == bill(fallback, 1000)
    assert counted_for_gpt_4o == bill(fallback, 1500)
    fitting = fitting_max_tokens(
        [fallback],
        prompt_tokens=1000,
        bound=OutputBound(100),
        fallback=FALLBACK,
        available=bill(fallback, 1500, 10),
        counted_for="gpt-4o",
    )
    assert fitting == 10


@pytest.mark.parametrize(
    ("name", "encoding"),
    [
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("mock-small", "cl100k_base"),
        # tiktoken knows it in an encoding the gateway does not ship: counted as before, without a download.
        ("text-davinci-003", "cl100k_base"),
    ],
)
def test_a_prompt_is_counted_in_the_encoding_tiktoken_gives_the_model_when_the_gateway_ships_it(name, encoding):
    assert encoding_name_for(name) == encoding
