"""What an evaluation reserves and how long it may hold it: the pure part of the worker's budget arithmetic."""

from decimal import Decimal

import pytest

from llmops.gateway.chat.worst_case import reserved_prompt_tokens
from llmops.gateway.shadow.services import hold_seconds, worst_case
from routing.catalog import ModelEntry, ModelPrices, ProviderEntry


def model_of(kind: str, *, timeout_seconds: float = 60) -> ModelEntry:
    provider = ProviderEntry(name=kind, kind=kind, base_url="", api_key="", timeout_seconds=timeout_seconds)
    return ModelEntry("m", "m", provider, ModelPrices(Decimal(1), Decimal(1), Decimal(1)), 8000)


@pytest.mark.parametrize(("kind", "reserved"), [("openai", 1000), ("anthropic", 1500), ("bedrock", 1500)])
def test_a_prompt_another_tokenizer_counts_is_reserved_with_a_margin(kind, reserved):
    """tiktoken counts OpenAI's prompts exactly; other providers bill their own, often larger, count."""
    assert reserved_prompt_tokens(model_of(kind), 1000) == reserved
    assert reserved_prompt_tokens(model_of(kind), 1) == (1 if kind == "openai" else 2)


def test_an_evaluation_may_take_its_calls_timeouts_one_attempt_each_and_a_minute():
    reference, judge = model_of("openai", timeout_seconds=60), model_of("anthropic", timeout_seconds=30)

    assert hold_seconds([reference]) == 120
    assert hold_seconds([reference, judge]) == 150


def test_a_reference_call_reserves_its_prompts_image_at_the_context_window_of_a_model_that_bounds_none():
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    text = {"model": "m", "messages": [{"role": "user", "content": "Describe it."}], "max_tokens": 10}
    looked_at = {**text, "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe it."}, image]}]}
    reference = model_of("openai")

    # 1 USD a million tokens: 5 prompt tokens and 10 answer tokens, or the 8,000-token window and 10.
    assert worst_case(reference, text, prompt_tokens=5) == Decimal("0.000015")
    assert worst_case(reference, looked_at, prompt_tokens=5) == Decimal("0.00801")
