import logging

import pytest

from routing import tokens
from routing.tokens import count_chat_tokens, count_text_tokens, encoding_name_for

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
