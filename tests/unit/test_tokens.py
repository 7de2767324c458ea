import asyncio
import logging
import threading

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.cpu import OFFLOAD_MIN_CHARS
from routing import tokens
from routing.tokens import (
    MAX_TOKEN_BYTES,
    chat_tokens_lower_bound,
    count_chat_tokens,
    count_chat_tokens_async,
    count_definition_tokens,
    count_prompt_tokens_async,
    count_text_tokens,
    encoding_name_for,
)

# OpenAI's cookbook example: the API reports 129 prompt tokens for it on gpt-4 and gpt-3.5 (cl100k_base)
# and 124 on gpt-4o (o200k_base).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain "
        "English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased "
        "leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-4", 129), ("gpt-3.5-turbo", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)]
)
def test_chat_prompt_counts_match_what_openai_reports(model, expected):
    assert count_chat_tokens(COOKBOOK_MESSAGES, model=model) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "user", "content": "Hello, how are you?"}, 13),
        ({"role": "system", "content": "You are a bot."}, 12),
        ({"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."}, 20),
    ],
)
def test_single_message_counts(message, expected):
    assert count_chat_tokens([message], model="gpt-4") == expected


def test_content_parts_count_their_text():
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello, how are you?"}]}]

    assert count_chat_tokens(parts, model="gpt-4") == 13


def test_what_a_provider_bills_of_an_assistant_turn_is_counted_beside_its_content():
    """An earlier assistant turn's legacy function call and its refusal are read as prompt as its text is."""
    call = {"name": "lookup", "arguments": '{"order_id": "' + "7" * 400 + '"}'}
    said = {"role": "assistant", "content": None, "function_call": call}
    refused = {"role": "assistant", "content": None, "refusal": "I cannot help with that request, sorry."}
    refused_part = {"role": "assistant", "content": [{"type": "refusal", "refusal": refused["refusal"]}]}
    empty = count_chat_tokens([{"role": "assistant", "content": None}], model="gpt-4o")

    assert count_chat_tokens([said], model="gpt-4o") - empty == count_text_tokens(
        orjson.dumps(call).decode(), model="gpt-4o"
    )
    refusal_tokens = count_text_tokens(refused["refusal"], model="gpt-4o")
    assert count_chat_tokens([refused], model="gpt-4o") - empty == refusal_tokens
    assert count_chat_tokens([refused_part], model="gpt-4o") - empty == refusal_tokens


def test_a_prompt_counts_its_tool_definitions_and_response_format_as_billed():
    tools = [{"type": "function", "function": {"name": "f", "description": "d " * 300, "parameters": {}}}]
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "object", "description": "x" * 90}},
    }
    messages = [{"role": "user", "content": "hi"}]
    body = {"messages": messages, "tools": tools, "functions": tools, "response_format": schema}

    expected = count_chat_tokens(messages, model="gpt-4o") + sum(
        count_text_tokens(orjson.dumps(value).decode(), model="gpt-4o") for value in (tools, tools, schema)
    )
    assert asyncio.run(count_prompt_tokens_async(body, model="gpt-4o")) == expected
    assert count_definition_tokens(body, model="gpt-4o") == expected - count_chat_tokens(messages, model="gpt-4o")


def test_model_families_pick_their_encoding():
    assert encoding_name_for("gpt-4o-2024-08-06") == "o200k_base"
    assert encoding_name_for("o3-mini") == "o200k_base"
    assert encoding_name_for("gpt-4-turbo") == "cl100k_base"
    assert encoding_name_for("claude-3-5-sonnet") == "cl100k_base"


def test_an_encoding_that_cannot_load_falls_back_to_an_estimate(monkeypatch, caplog):
    import tiktoken

    def unavailable(name):
        raise OSError("no network")

    tokens._encoding.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", unavailable)
    try:
        with caplog.at_level(logging.WARNING, logger="routing.tokens"):
            assert count_text_tokens("x" * 40, model="gpt-4o") == 10
        assert "cannot be loaded" in caplog.text
    finally:
        tokens._encoding.cache_clear()


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_no_token_of_an_encoding_in_use_stands_for_more_bytes_than_the_lower_bound_assumes(name):
    encoding = tokens._encoding(name)

    assert max(len(token) for token in encoding.token_byte_values()) == MAX_TOKEN_BYTES


TEXT = st.text(st.characters(codec="utf-8"), max_size=400) | st.builds(
    lambda unit, times: unit * times,
    st.sampled_from([" ", "=", "\n", "é", "日本", "<|endoftext|>", "ab"]),
    st.integers(0, 600),
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT},
    optional={"name": st.sampled_from(["bob", "example_user"])},
)


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(MESSAGE, max_size=4), model=st.sampled_from(["gpt-4", "gpt-4o"]))
def test_the_lower_bound_never_exceeds_the_count(messages, model):
    assert chat_tokens_lower_bound(messages) <= count_chat_tokens(messages, model=model)


def test_the_lower_bound_is_close_for_the_longest_tokens():
    messages = [{"role": "user", "content": " " * 128_000}]

    assert chat_tokens_lower_bound(messages) >= count_chat_tokens(messages, model="gpt-4o") - 10


def test_a_large_text_counts_the_same_as_with_a_list_of_tokens():
    text = "Tokens <|endoftext|> café 日本語 1234 " * 3000
    assert len(text) >= OFFLOAD_MIN_CHARS
    for model in ("gpt-4", "gpt-4o"):
        encoding = tokens._encoding(encoding_name_for(model))
        assert count_text_tokens(text, model=model) == len(encoding.encode(text, disallowed_special=()))


def test_large_prompts_are_counted_on_the_cpu_pool_and_small_ones_inline(monkeypatch):
    threads = []
    count = tokens.count_chat_tokens

    def spy(messages, *, model):
        threads.append(threading.current_thread().name)
        return count(messages, model=model)

    monkeypatch.setattr(tokens, "count_chat_tokens", spy)
    small = [{"role": "user", "content": "hello"}]
    large = [{"role": "user", "content": "x" * OFFLOAD_MIN_CHARS}]

    async def both():
        loop_thread = threading.current_thread().name
        counts = (
            await count_chat_tokens_async(small, model="gpt-4o"),
            await count_chat_tokens_async(large, model="gpt-4o"),
        )
        return loop_thread, counts

    loop_thread, counts = asyncio.run(both())

    assert counts == (count(small, model="gpt-4o"), count(large, model="gpt-4o"))
    assert threads[0] == loop_thread
    assert threads[1].startswith("llmops-cpu")
