"""Where the gateway marks a request for the provider's prompt cache, in Anthropic's and Bedrock's own forms; the
client's own marks checked on their way; and the loopback providers writing the marked prefix once and reading it
after."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing import upstream
from routing.providers import prompt_cache
from routing.providers.anthropic import messages_request
from routing.providers.bedrock import converse_request, tools_sent
from routing.providers.prompt_cache import (
    Checkpoints,
    checkpoint_family,
    may_write_cache,
    prompt_checkpoints,
)
from tests.loops import run
from tests.providers.anthropic_server import CACHED_MODELS
from tests.providers.bedrock_server import CACHE_POINT_MODELS
from tests.providers.conftest import WEATHER_TOOL, chunks_of, user

SONNET = "claude-3-5-sonnet-20241022"
HAIKU = "claude-3-5-haiku-20241022"
HAIKU_4_5 = "claude-haiku-4-5-20251001"
BEDROCK_CLAUDE = "anthropic.claude-3-7-sonnet-20250219-v1:0"
BEDROCK_CLAUDE_3_HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
# About 1,300 tokens by tiktoken, 1,500 by the loopback providers' four characters a token: over Sonnet's minimum of
# 1,024, under Haiku's 2,048.
HANDBOOK = "Refunds are issued within 14 days of a return being received at our warehouse. " * 75
EPHEMERAL = {"type": "ephemeral"}
CACHE_POINT = {"cachePoint": {"type": "default"}}
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile"


def conversation(system: str = HANDBOOK, *, model: str = SONNET, **options) -> dict:
    """A second turn: the system prompt, a first question and its answer, then the new question."""
    messages = [
        {"role": "system", "content": system},
        user("Where is my parcel?"),
        {"role": "assistant", "content": "It left the warehouse yesterday."},
        user("And my refund?"),
    ]
    return {"model": model, "messages": messages, **options}


def to_anthropic(body: dict) -> dict:
    """The Messages request the adapter sends under a rule with provider_cache auto."""
    return messages_request(body, checkpoints=prompt_checkpoints(body, kind="anthropic"))


def to_bedrock(body: dict) -> dict:
    """The Converse request the adapter sends under a rule with provider_cache auto."""
    return converse_request(body, checkpoints=prompt_checkpoints(body, kind="bedrock", tools_sent=tools_sent(body)))


def marks_in(request: dict) -> list[dict]:
    """The blocks of an Anthropic request that carry cache_control, tools first."""
    blocks = [*request.get("tools", []), *request.get("system", [])]
    blocks += [block for message in request["messages"] for block in message["content"]]
    return [block for block in blocks if "cache_control" in block]


def test_a_long_system_prompt_is_marked_with_the_turns_after_it_but_not_the_last():
    assert prompt_checkpoints(conversation(), kind="anthropic") == Checkpoints(system=True, history=True)

    sent = to_anthropic(conversation())

    assert sent["system"] == [{"type": "text", "text": HANDBOOK, "cache_control": EPHEMERAL}]
    first_question, answer, last_question = sent["messages"]
    assert answer["content"] == [
        {"type": "text", "text": "It left the warehouse yesterday.", "cache_control": EPHEMERAL}
    ]
    assert "cache_control" not in first_question["content"][-1] and "cache_control" not in last_question["content"][-1]


def test_long_tools_are_marked_before_the_system_prompt_that_follows_them():
    tools = [{**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "description": HANDBOOK}}]

    sent = to_anthropic(conversation(system="Be brief.", tools=tools))

    assert sent["tools"][-1]["cache_control"] == EPHEMERAL
    # Tools then system prompt: the prefix up to the short system prompt holds the tools too, so it qualifies.
    assert sent["system"][-1]["cache_control"] == EPHEMERAL
    assert (
        sum(part.get("cache_control") is not None for message in sent["messages"] for part in message["content"]) == 1
    )


def test_a_prefix_too_short_to_cache_gets_no_checkpoint():
    short = conversation(system="You are a helpful support agent.")

    assert prompt_checkpoints(short, kind="anthropic") == prompt_cache.NO_CHECKPOINTS
    assert "cache_control" not in str(to_anthropic(short))
    assert "cachePoint" not in str(to_bedrock({**short, "model": BEDROCK_CLAUDE}))


def test_haiku_needs_twice_the_prefix_sonnet_does():
    assert prompt_checkpoints(conversation(model=SONNET), kind="anthropic")
    assert not prompt_checkpoints(conversation(model=HAIKU), kind="anthropic")
    assert prompt_checkpoints(conversation(HANDBOOK * 2, model=HAIKU), kind="anthropic").system


def test_haiku_4_5_and_opus_4_5_need_four_times_the_prefix_sonnet_does():
    # About 2,600 tokens: twice Sonnet's minimum and more, under the 4,096 of Haiku 4.5 and Opus 4.5; then 5,100.
    for model in (HAIKU_4_5, "claude-opus-4-5-20251101", "global.anthropic.claude-opus-4-5-20251101-v1:0"):
        kind = "bedrock" if model.startswith("global.") else "anthropic"
        assert not prompt_checkpoints(conversation(HANDBOOK * 2, model=model), kind=kind), model
        assert prompt_checkpoints(conversation(HANDBOOK * 4, model=model), kind=kind).system, model


@pytest.mark.parametrize(
    ("kind", "model", "caches"),
    [
        # Bedrock takes a cachePoint on Claude 3.7 Sonnet, 3.5 Haiku and the 4 family only; others answer a 400.
        ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0", False),
        ("bedrock", "anthropic.claude-3-sonnet-20240229-v1:0", False),
        ("bedrock", "anthropic.claude-3-opus-20240229-v1:0", False),
        ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", False),
        ("bedrock", "anthropic.claude-3-5-sonnet-20241022-v2:0", False),
        ("bedrock", "us.anthropic.claude-3-7-sonnet-20250219-v1:0", True),
        ("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0", True),
        ("bedrock", "anthropic.claude-sonnet-4-20250514-v1:0", True),
        ("bedrock", "anthropic.claude-opus-4-1-20250805-v1:0", True),
        ("bedrock", f"{PROFILE_ARN}/us.anthropic.claude-sonnet-4-5-20250929-v1:0", True),
        ("bedrock", "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4", False),
        ("bedrock", "amazon.nova-pro-v1:0", False),
        ("bedrock", "meta.llama3-70b-instruct-v1:0", False),
        # Anthropic's API caches every Claude 3 and later model but Claude 3 Sonnet.
        ("anthropic", "claude-3-sonnet-20240229", False),
        ("anthropic", "claude-3-haiku-20240307", True),
        ("anthropic", "claude-3-opus-latest", True),
        ("anthropic", "claude-3-5-sonnet-20240620", True),
        ("anthropic", "claude-3-7-sonnet-latest", True),
        ("anthropic", "claude-sonnet-4-0", True),
        ("anthropic", "claude-opus-4-1", True),
        ("anthropic", "claude-sonnet-4-6", True),
        ("anthropic", "claude-2.1", False),
        ("anthropic", "claude-instant-1.2", False),
        ("openai", "claude-3-5-sonnet-20241022", False),
    ],
)
def test_only_the_families_the_provider_documents_take_checkpoints(kind, model, caches):
    assert (checkpoint_family(kind=kind, upstream_name=model) is not None) is caches
    # About 5,100 tokens: over every family's minimum.
    assert bool(prompt_checkpoints(conversation(HANDBOOK * 4, model=model), kind=kind)) is caches


def test_the_families_minimums_are_those_the_loopback_providers_hold_apart():
    """The loopback servers list their models and minimums as data of their own: the gateway's table agrees."""
    for kind, models in (("anthropic", CACHED_MODELS), ("bedrock", CACHE_POINT_MODELS)):
        for model, minimum in models.items():
            assert checkpoint_family(kind=kind, upstream_name=model).minimum_tokens == minimum, model


def test_sonnet_4_6_needs_the_1024_tokens_anthropic_documents():
    assert prompt_checkpoints(conversation(model="claude-sonnet-4-6"), kind="anthropic").system


def test_off_and_models_without_a_prompt_cache_get_none():
    assert "cache_control" not in str(messages_request(conversation()))
    assert "cachePoint" not in str(to_bedrock(conversation(model="amazon.nova-lite-v1:0")))
    assert not prompt_checkpoints(conversation(model="gpt-4o"), kind="openai")


def test_a_clients_own_cache_control_is_sent_as_it_is_and_the_gateway_adds_none():
    body = conversation()
    own = {"type": "ephemeral", "ttl": "5m"}
    body["messages"][3] = user([{"type": "text", "text": "And my refund?", "cache_control": own}])

    assert marks_in(to_anthropic(body)) == [{"type": "text", "text": "And my refund?", "cache_control": own}]


def test_a_mark_on_a_blank_part_the_adapter_leaves_out_is_not_the_clients_and_the_gateway_marks_the_prefix():
    body = conversation()
    body["messages"][3] = user(
        [
            {"type": "text", "text": "And my refund?"},
            {"type": "text", "text": "  ", "cache_control": EPHEMERAL},
        ]
    )

    assert not prompt_cache.client_marked(body)
    assert prompt_checkpoints(body, kind="anthropic") == Checkpoints(system=True, history=True)
    assert [block["text"] for block in marks_in(to_anthropic(body))] == [HANDBOOK, "It left the warehouse yesterday."]


def refusal(provider, body: dict) -> upstream.RequestRefused:
    with pytest.raises(upstream.RequestRefused) as refused:
        run(upstream.chat_completion(provider, body, provider_cache="auto"))
    return refused.value


def test_a_one_hour_cache_is_refused_before_any_call_naming_the_parameter(
    anthropic_server, anthropic_provider, bedrock_server, bedrock_provider
):
    for provider, server, model in (
        (anthropic_provider, anthropic_server, SONNET),
        (bedrock_provider, bedrock_server, BEDROCK_CLAUDE),
    ):
        body = conversation(model=model)
        body["messages"][0]["content"] = [
            {"type": "text", "text": HANDBOOK, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ]

        refused = refusal(provider, body)

        assert (refused.upstream_status, refused.code) == (400, "unsupported_parameter")
        assert refused.param == "messages[0].content[0].cache_control.ttl"
        assert "twice the input price" in refused.message
        assert server.app.requests == []


def test_more_than_four_client_marks_are_refused_naming_the_fifth(anthropic_server, anthropic_provider):
    parts = [{"type": "text", "text": f"Rule {number}.", "cache_control": EPHEMERAL} for number in range(5)]
    body = {"model": SONNET, "messages": [{"role": "system", "content": parts}, user("Hello?")]}

    refused = refusal(anthropic_provider, body)

    assert (refused.param, refused.code) == ("messages[0].content[4].cache_control", "invalid_value")
    assert "at most 4" in refused.message and anthropic_server.app.requests == []
    # Four are sent as they are.
    body["messages"][0]["content"] = parts[:4]
    run(upstream.chat_completion(anthropic_provider, body, provider_cache="auto"))
    assert len(marks_in(anthropic_server.app.requests[-1])) == 4


def test_a_cache_control_that_is_not_ephemeral_is_refused(anthropic_server, anthropic_provider):
    body = conversation()
    body["tools"] = [{**WEATHER_TOOL, "cache_control": {"type": "persistent"}}]

    refused = refusal(anthropic_provider, body)

    assert (refused.param, refused.code) == ("tools[0].cache_control.type", "invalid_value")


def test_bedrock_marks_with_cache_points_after_the_tools_system_and_history():
    tools = [{**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "description": HANDBOOK}}]
    body = conversation(model=BEDROCK_CLAUDE, tools=tools)

    sent = to_bedrock(body)

    assert sent["toolConfig"]["tools"][-1] == CACHE_POINT and len(sent["toolConfig"]["tools"]) == 2
    assert sent["system"] == [{"text": HANDBOOK}, CACHE_POINT]
    assert sent["messages"][1]["content"] == [{"text": "It left the warehouse yesterday."}, CACHE_POINT]
    assert CACHE_POINT not in sent["messages"][2]["content"]
    # Without the tools (tool_choice none), their checkpoint goes too, and the prefix is counted without them.
    without_tools = to_bedrock({**body, "tool_choice": "none"})
    assert "toolConfig" not in without_tools and without_tools["system"][-1] == CACHE_POINT


def test_bedrock_turns_a_clients_cache_control_into_a_cache_point_where_it_was_set():
    tools = [{**WEATHER_TOOL, "cache_control": EPHEMERAL}]
    body = {"model": BEDROCK_CLAUDE, "messages": [user("Weather in Paris?")], "tools": tools}

    sent = to_bedrock(body)

    assert sent["toolConfig"]["tools"][1] == CACHE_POINT
    assert sent["messages"] == [{"role": "user", "content": [{"text": "Weather in Paris?"}]}]


def test_the_anthropic_provider_writes_the_marked_prefix_once_and_reads_it_after(anthropic_server, anthropic_provider):
    replies = [run(upstream.chat_completion(anthropic_provider, conversation(), provider_cache="auto")) for _ in "ab"]

    written, read = (reply.body["usage"]["prompt_tokens_details"] for reply in replies)
    assert written["cache_write_tokens"] > 1400 and written["cached_tokens"] == 0
    assert read == {"cached_tokens": written["cache_write_tokens"], "cache_write_tokens": 0}


def test_haiku_4_5_caches_a_prefix_of_its_minimum_and_not_one_under_it(anthropic_server, anthropic_provider):
    under, over = conversation(HANDBOOK * 2, model=HAIKU_4_5), conversation(HANDBOOK * 4, model=HAIKU_4_5)
    replies = [run(upstream.chat_completion(anthropic_provider, body, provider_cache="auto")) for body in (under, over)]

    sent_under, sent_over = anthropic_server.app.requests
    assert "cache_control" not in str(sent_under) and sent_over["system"][-1]["cache_control"] == EPHEMERAL
    assert replies[0].body["usage"]["prompt_tokens_details"]["cache_write_tokens"] == 0
    assert replies[1].body["usage"]["prompt_tokens_details"]["cache_write_tokens"] > 4096


def test_the_bedrock_provider_writes_the_marked_prefix_once_and_reads_it_after(bedrock_server, bedrock_provider):
    body = conversation(model=BEDROCK_CLAUDE, stream=True, stream_options={"include_usage": True})
    first = run(upstream.chat_completion(bedrock_provider, {**body, "stream": False}, provider_cache="auto"))

    async def streamed():
        stream = await upstream.open_chat_stream(bedrock_provider, body, provider_cache="auto")
        try:
            return [event async for event in stream.events()]
        finally:
            await stream.aclose()

    usage = chunks_of(run(streamed()))[-1]["usage"]

    written = first.body["usage"]["prompt_tokens_details"]["cache_write_tokens"]
    assert written > 1400
    assert usage["prompt_tokens_details"] == {"cached_tokens": written, "cache_write_tokens": 0}
    assert bedrock_server.app.requests[-1]["system"][-1] == CACHE_POINT


def test_claude_3_haiku_on_bedrock_gets_no_cache_point_and_is_answered(bedrock_server, bedrock_provider):
    long_conversation = conversation(HANDBOOK * 2, model=BEDROCK_CLAUDE_3_HAIKU)

    reply = run(upstream.chat_completion(bedrock_provider, long_conversation, provider_cache="auto"))

    assert reply.body["choices"][0]["message"]["content"] == "Echo: And my refund?"
    assert "cachePoint" not in str(bedrock_server.app.requests)
    # What a cache point would have met: Bedrock's 400 for a model without prompt caching.
    marked = {**long_conversation, "tools": [{**WEATHER_TOOL, "cache_control": EPHEMERAL}], "tool_choice": "auto"}
    with pytest.raises(upstream.UpstreamRejected) as rejected:
        run(upstream.chat_completion(bedrock_provider, marked))
    assert rejected.value.upstream_status == 400 and "prompt caching" in rejected.value.message


def test_blank_text_parts_reach_neither_provider(
    anthropic_server, anthropic_provider, bedrock_server, bedrock_provider
):
    parts = [{"type": "text", "text": ""}, {"type": "text", "text": " \n "}, {"type": "text", "text": "Hello?"}]
    for provider, model in ((anthropic_provider, SONNET), (bedrock_provider, BEDROCK_CLAUDE)):
        body = {"model": model, "messages": [{"role": "system", "content": parts}, user(parts)]}

        reply = run(upstream.chat_completion(provider, body))

        assert reply.body["choices"][0]["message"]["content"] == "Echo: Hello?"
    assert bedrock_server.app.requests[-1]["system"] == [{"text": "Hello?"}]
    assert anthropic_server.app.requests[-1]["system"] == [{"type": "text", "text": "Hello?"}]


def counted_characters(monkeypatch) -> list[int]:
    """The length of every text the decision hands to tiktoken, as it goes."""
    counted: list[int] = []

    def count(text: str, *, model: str) -> int:
        counted.append(len(text))
        return original(text, model=model)

    original = prompt_cache.count_text_tokens
    monkeypatch.setattr(prompt_cache, "count_text_tokens", count)
    return counted


def system_prompt_only(system: str) -> dict:
    return {"model": SONNET, "messages": [{"role": "system", "content": system}, user("And my refund?")]}


def test_lengths_decide_without_counting_where_they_can(monkeypatch):
    counted = counted_characters(monkeypatch)

    # A megabyte of spaces: at least 8,192 tokens whatever they are (no token is over 128 bytes).
    assert prompt_checkpoints(conversation(" " * 1_000_000), kind="anthropic").system
    # Fewer bytes than Sonnet's 1,024 tokens: never enough.
    assert not prompt_checkpoints(system_prompt_only("x" * 1000), kind="anthropic")
    assert counted == []


@pytest.mark.parametrize(("letters", "marked"), [(130_000, True), (8_000, False)])
def test_a_prefix_whose_length_does_not_decide_is_counted_a_bounded_number_of_characters(monkeypatch, letters, marked):
    counted = counted_characters(monkeypatch)

    # Between Sonnet's minimum in bytes and 128 times it; tiktoken makes a token of 8 letters: 16,250 and 1,000 tokens.
    assert prompt_checkpoints(system_prompt_only("a" * letters), kind="anthropic").system is marked
    assert 0 < sum(counted) <= 1024 * prompt_cache.COUNTED_CHARS_PER_TOKEN


# Texts of any script and length: a few characters repeated up to some thousands of times.
texts = st.builds(
    lambda piece, times: piece * times,
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
    st.integers(0, 1500),
)


@settings(max_examples=60, deadline=None)
@given(system=texts, history=st.lists(texts, max_size=4), last=texts, model=st.sampled_from([SONNET, HAIKU]))
def test_a_request_the_gateway_marks_is_always_one_the_worst_case_prices_at_the_write_price(
    system, history, last, model
):
    turns = [{"role": ("user", "assistant")[index % 2], "content": text} for index, text in enumerate(history)]
    body = {"model": model, "messages": [{"role": "system", "content": system}, *turns, user(last)]}

    if prompt_checkpoints(body, kind="anthropic"):
        assert may_write_cache(body, kind="anthropic", upstream_name=model, provider_cache="auto")
