"""What an evaluation reserves and how long it may hold it: the pure part of the worker's budget arithmetic."""

from decimal import Decimal

import pytest

from llmops.gateway.shadow.services import hold_seconds, reserved_prompt_tokens
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
