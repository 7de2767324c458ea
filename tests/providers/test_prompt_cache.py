"""Where the gateway marks a request for the provider's prompt cache, in Anthropic's and Bedrock's own forms, and the
loopback providers writing the marked prefix once and reading it after."""

from hypothesis import given, settings
from hypothesis import strategies as st

from routing import upstream
from routing.providers import prompt_cache
from routing.providers.anthropic import messages_request
from routing.providers.bedrock import converse_request
from routing.providers.prompt_cache import Checkpoints, may_write_cache, prompt_checkpoints
from tests.loops import run
from tests.providers.conftest import WEATHER_TOOL, chunks_of, user

SONNET = "claude-3-5-sonnet-20241022"
HAIKU = "claude-3-5-haiku-20241022"
BEDROCK_CLAUDE = "anthropic.claude-3-5-sonnet-20241022-v2:0"
# About 1,500 tokens (tiktoken's and the loopback providers' four characters a token alike): over Sonnet's minimum
# of 1,024, under Haiku's 2,048.
HANDBOOK = "Refunds are issued within 14 days of a return being received at our warehouse. " * 75
EPHEMERAL = {"type": "ephemeral"}
CACHE_POINT = {"cachePoint": {"type": "default"}}


def conversation(system: str = HANDBOOK, *, model: str = SONNET, **options) -> dict:
    """A second turn: the system prompt, a first question and its answer, then the new question."""
    messages = [
        {"role": "system", "content": system},
        user("Where is my parcel?"),
        {"role": "assistant", "content": "It left the warehouse yesterday."},
        user("And my refund?"),
    ]
    return {"model": model, "messages": messages, **options}


def test_a_long_system_prompt_is_marked_with_the_turns_after_it_but_not_the_last():
    assert prompt_checkpoints(conversation(), kind="anthropic") == Checkpoints(system=True, history=True)

    sent = messages_request(conversation(), provider_cache="auto")

    assert sent["system"] == [{"type": "text", "text": HANDBOOK, "cache_control": EPHEMERAL}]
    first_question, answer, last_question = sent["messages"]
    assert answer["content"] == [
        {"type": "text", "text": "It left the warehouse yesterday.", "cache_control": EPHEMERAL}
    ]
    assert "cache_control" not in first_question["content"][-1] and "cache_control" not in last_question["content"][-1]


def test_long_tools_are_marked_before_the_system_prompt_that_follows_them():
    tools = [{**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "description": HANDBOOK}}]
    body = conversation(system="Be brief.", tools=tools)

    sent = messages_request(body, provider_cache="auto")

    assert sent["tools"][-1]["cache_control"] == EPHEMERAL
    # Tools then system prompt: the prefix up to the short system prompt holds the tools too, so it qualifies.
    assert sent["system"][-1]["cache_control"] == EPHEMERAL
    assert (
        sum(part.get("cache_control") is not None for message in sent["messages"] for part in message["content"]) == 1
    )


def test_a_prefix_too_short_to_cache_gets_no_checkpoint():
    short = conversation(system="You are a helpful support agent.")

    assert prompt_checkpoints(short, kind="anthropic") == prompt_cache.NO_CHECKPOINTS
    assert "cache_control" not in str(messages_request(short, provider_cache="auto"))
    assert "cachePoint" not in str(converse_request({**short, "model": BEDROCK_CLAUDE}, provider_cache="auto"))


def test_haiku_needs_twice_the_prefix_sonnet_does():
    assert prompt_checkpoints(conversation(model=SONNET), kind="anthropic")
    assert not prompt_checkpoints(conversation(model=HAIKU), kind="anthropic")
    assert prompt_checkpoints(conversation(HANDBOOK * 2, model=HAIKU), kind="anthropic").system


def test_off_and_models_without_anthropics_cache_get_none():
    assert "cache_control" not in str(messages_request(conversation(), provider_cache="off"))
    assert "cachePoint" not in str(converse_request(conversation(model="amazon.nova-lite-v1:0"), provider_cache="auto"))
    assert not prompt_checkpoints(conversation(model="gpt-4o"), kind="openai")


def test_a_clients_own_cache_control_is_sent_as_it_is_and_the_gateway_adds_none():
    body = conversation()
    body["messages"][3] = user(
        [{"type": "text", "text": "And my refund?", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    )

    sent = messages_request(body, provider_cache="auto")

    marked = [
        block
        for block in [*sent["system"], *(block for message in sent["messages"] for block in message["content"])]
        if "cache_control" in block
    ]
    assert marked == [{"type": "text", "text": "And my refund?", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]


def test_bedrock_marks_with_cache_points_after_the_tools_system_and_history():
    tools = [{**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "description": HANDBOOK}}]
    body = conversation(model=BEDROCK_CLAUDE, tools=tools)

    sent = converse_request(body, provider_cache="auto")

    assert sent["toolConfig"]["tools"][-1] == CACHE_POINT and len(sent["toolConfig"]["tools"]) == 2
    assert sent["system"] == [{"text": HANDBOOK}, CACHE_POINT]
    assert sent["messages"][1]["content"] == [{"text": "It left the warehouse yesterday."}, CACHE_POINT]
    assert CACHE_POINT not in sent["messages"][2]["content"]
    # Without the tools (tool_choice none), their checkpoint goes too, and the prefix is counted without them.
    without_tools = converse_request({**body, "tool_choice": "none"}, provider_cache="auto")
    assert "toolConfig" not in without_tools and without_tools["system"][-1] == CACHE_POINT


def test_bedrock_turns_a_clients_cache_control_into_a_cache_point_where_it_was_set():
    tools = [{**WEATHER_TOOL, "cache_control": EPHEMERAL}]
    body = {"model": BEDROCK_CLAUDE, "messages": [user("Weather in Paris?")], "tools": tools}

    sent = converse_request(body, provider_cache="auto")

    assert sent["toolConfig"]["tools"][1] == CACHE_POINT
    assert sent["messages"] == [{"role": "user", "content": [{"text": "Weather in Paris?"}]}]


def test_the_anthropic_provider_writes_the_marked_prefix_once_and_reads_it_after(anthropic_server, anthropic_provider):
    replies = [run(upstream.chat_completion(anthropic_provider, conversation(), provider_cache="auto")) for _ in "ab"]

    written, read = (reply.body["usage"]["prompt_tokens_details"] for reply in replies)
    assert written["cache_write_tokens"] > 1400 and written["cached_tokens"] == 0
    assert read == {"cached_tokens": written["cache_write_tokens"], "cache_write_tokens": 0}


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
