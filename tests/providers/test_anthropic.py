"""The Anthropic adapter against a loopback server speaking the Messages API."""

import orjson
import pytest

from llmops.gateway.chat.validation import FIELD_CHECKS
from routing import upstream
from routing.providers.base import TRANSLATED_FIELDS, UNTRANSLATED_PARAMETERS
from tests.loops import run
from tests.providers.conftest import (
    ASKING_FOR_NOTHING,
    ASKING_FOR_SOMETHING,
    FILE_PARTS,
    LEGACY_FUNCTION_HISTORIES,
    NO_OP_FIELDS,
    PNG_DATA_URL,
    REFUSED_ANSWERS,
    UNTRANSLATED_FIELDS,
    WEATHER_TOOL,
    asking_ids,
    assert_field_refused,
    assert_no_usage_answered_or_streamed,
    assert_part_refused,
    assert_refused_naming,
    chunks_of,
    collect_stream,
    collect_stream_of,
    provider_entry,
    streamed_text,
    user,
    with_file,
)
from tests.servers import free_port


def test_text_reply_with_system_prompts_and_sampling_options(anthropic_server, anthropic_provider):
    body = {
        "model": "claude-test",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "Hello there"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "max_tokens": 50,
    }

    reply = run(upstream.chat_completion(anthropic_provider, body))

    sent = anthropic_server.app.requests[-1]
    assert sent["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in English."},
    ]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    assert (sent["temperature"], sent["top_p"], sent["stop_sequences"], sent["max_tokens"]) == (0.2, 0.9, ["END"], 50)
    choice = reply.body["choices"][0]
    assert reply.body["object"] == "chat.completion"
    assert choice["message"] == {"role": "assistant", "content": "Echo: Hello there", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert orjson.loads(reply.raw) == reply.body


def test_max_tokens_is_always_sent_and_a_cut_answer_finishes_with_length(anthropic_server, anthropic_provider):
    reply = run(
        upstream.chat_completion(
            anthropic_provider,
            {"model": "claude-test", "messages": [{"role": "user", "content": "one two three four"}]},
        )
    )
    assert anthropic_server.app.requests[-1]["max_tokens"] == 4096
    assert reply.body["choices"][0]["finish_reason"] == "stop"

    cut = run(
        upstream.chat_completion(
            anthropic_provider,
            {
                "model": "claude-test",
                "messages": [{"role": "user", "content": "one two three four"}],
                "max_completion_tokens": 2,
            },
        )
    )
    assert cut.body["choices"][0]["finish_reason"] == "length"
    assert cut.body["choices"][0]["message"]["content"] == "Echo: one"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("model_context_window_exceeded", "length"),
        # A turn paused, to be sent back to go on: not a whole answer.
        ("pause_turn", "pause_turn"),
        ("a_reason_added_since", "a_reason_added_since"),
    ],
    ids=["context-window", "pause-turn", "unknown"],
)
def test_an_answer_cut_by_the_context_window_finishes_with_length_and_an_unknown_stop_reason_is_passed_on(
    anthropic_provider, stop_reason, finish_reason
):
    """Either used to read "stop", which the cache takes for a whole answer."""
    body = {"model": f"claude-stop-{stop_reason}", "messages": [{"role": "user", "content": "one two three"}]}

    reply = run(upstream.chat_completion(anthropic_provider, body))
    chunks = chunks_of(run(collect_stream_of(anthropic_provider, {**body, "stream": True})))

    assert reply.body["choices"][0]["finish_reason"] == finish_reason
    finished = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"]]
    assert finished == [finish_reason]


def test_images_go_as_base64_or_url_sources(anthropic_server, anthropic_provider):
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]

    reply = run(
        upstream.chat_completion(
            anthropic_provider, {"model": "claude-test", "messages": [{"role": "user", "content": content}]}
        )
    )

    blocks = anthropic_server.app.requests[-1]["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA_URL.split(",", 1)[1]},
    }
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert reply.body["choices"][0]["message"]["content"] == "Echo: What is in these? [image] [image]"


def test_tool_call_and_tool_result_round_trip(anthropic_server, anthropic_provider):
    first = run(
        upstream.chat_completion(
            anthropic_provider,
            {
                "model": "claude-test",
                "messages": [{"role": "user", "content": "Weather in Paris?"}],
                "tools": [WEATHER_TOOL],
                "tool_choice": "required",
                "parallel_tool_calls": False,
            },
        )
    )

    sent = anthropic_server.app.requests[-1]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    message = first.body["choices"][0]["message"]
    assert first.body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather" and orjson.loads(call["function"]["arguments"]) == {
        "city": "Paris"
    }

    second = run(
        upstream.chat_completion(
            anthropic_provider,
            {
                "model": "claude-test",
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    message,
                    {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"},
                ],
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
        )
    )

    sent = anthropic_server.app.requests[-1]
    assert sent["messages"][1]["content"] == [
        {"type": "tool_use", "id": call["id"], "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": call["id"], "content": "18C and sunny"}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert second.body["choices"][0]["message"]["content"] == "Echo: 18C and sunny"


def test_the_stop_sequence_that_ended_an_answer_is_named_beside_it_not_in_it(anthropic_provider):
    """The chat form's finish reason ``stop`` cannot say which stop sequence matched; the reply and the stream name it
    beside the answer (for /v1/messages), whose chat completion keeps OpenAI's shape, plain and streamed; nothing is
    named when the answer ended on its own."""
    body = {"model": "claude-test", "messages": [user("one two three")], "stop": ["two", "nine"]}

    async def streamed():
        stream = await upstream.open_chat_stream(anthropic_provider, {**body, "stream": True})
        return await collect_stream(stream), stream.stop_sequence

    reply = run(upstream.chat_completion(anthropic_provider, body))
    events, stream_stop_sequence = run(streamed())
    natural = run(upstream.chat_completion(anthropic_provider, {**body, "stop": ["nine"]}))

    choice = reply.body["choices"][0]
    assert (choice["finish_reason"], reply.stop_sequence, choice["message"]["content"]) == ("stop", "two", "Echo: one ")
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert b"stop_reason" not in reply.raw and b"two" not in reply.raw
    finish = next(chunk["choices"][0] for chunk in chunks_of(events) if chunk["choices"][0]["finish_reason"])
    assert (finish["finish_reason"], stream_stop_sequence) == ("stop", "two")
    assert set(finish) == {"index", "delta", "finish_reason"}
    assert natural.stop_sequence is None


def test_top_k_is_passed_on(anthropic_server, anthropic_provider):
    body = {"model": "claude-test", "messages": [user("Hello")], "top_k": 7}

    run(upstream.chat_completion(anthropic_provider, body))
    run(upstream.chat_completion(anthropic_provider, {**body, "top_k": -1}))  # vLLM's "no cut": nothing to send

    assert anthropic_server.app.requests[-2]["top_k"] == 7
    assert "top_k" not in anthropic_server.app.requests[-1]


@pytest.mark.parametrize(("param", "value"), ASKING_FOR_SOMETHING, ids=asking_ids(ASKING_FOR_SOMETHING))
def test_a_parameter_the_messages_api_cannot_take_is_refused_naming_it_before_any_call(
    anthropic_server, anthropic_provider, param, value
):
    """Such a parameter used to be dropped: the client got a 200 answer without what it asked for (free text for a
    JSON schema, no reasoning for an effort, one choice for n=2)."""
    body = {"model": "claude-test", "messages": [user("Hello")], param: value}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(upstream.chat_completion(anthropic_provider, body))

    assert_refused_naming(refused.value, param=param, model="claude-test", api="Anthropic's Messages API")
    assert anthropic_server.app.requests == []


def test_a_streamed_request_is_refused_before_any_call_too(anthropic_server, anthropic_provider):
    body = {"model": "claude-test", "messages": [user("Hello")], "reasoning_effort": "high", "stream": True}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(collect_stream_of(anthropic_provider, body))

    assert refused.value.param == "reasoning_effort" and anthropic_server.app.requests == []


def test_the_values_that_ask_for_nothing_are_taken_and_not_sent(anthropic_server, anthropic_provider):
    body = {"model": "claude-test", "messages": [user("Hello")], **ASKING_FOR_NOTHING}
    tools = {"tools": [WEATHER_TOOL], "parallel_tool_calls": True}

    run(upstream.chat_completion(anthropic_provider, body))
    run(upstream.chat_completion(anthropic_provider, {**body, **tools}))

    plain, with_tools = anthropic_server.app.requests
    assert set(plain) == {"model", "messages", "max_tokens"}
    assert set(with_tools) == {"model", "messages", "max_tokens", "tools"}


API = "Anthropic's Messages API"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(("name", "value"), UNTRANSLATED_FIELDS, ids=asking_ids(UNTRANSLATED_FIELDS))
def test_a_field_the_translation_does_not_know_is_refused_naming_it_before_any_call(
    anthropic_server, anthropic_provider, name, value, stream
):
    """Such a field used to be dropped: a 200 answer that ignored it (no extended thinking for `thinking`), where an
    OpenAI-compatible upstream is sent it."""
    body = {"model": "claude-test", "messages": [user("Hello")], name: value, "stream": stream}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(
            collect_stream_of(anthropic_provider, body)
            if stream
            else upstream.chat_completion(anthropic_provider, body)
        )

    assert_field_refused(refused.value, name=name, model="claude-test", api=API)
    assert anthropic_server.app.requests == []


def test_a_long_unknown_field_is_named_cut_short(anthropic_server, anthropic_provider):
    body = {"model": "claude-test", "messages": [user("Hello")], "x" * 500: 1}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(upstream.chat_completion(anthropic_provider, body))

    assert refused.value.param == "x" * 61 + "..."
    assert "x" * 62 not in refused.value.message and anthropic_server.app.requests == []


def test_the_chat_fields_that_ask_nothing_of_anthropic_are_taken_and_not_sent(anthropic_server, anthropic_provider):
    body = {"model": "claude-test", "messages": [user("Hello")], **NO_OP_FIELDS}

    run(upstream.chat_completion(anthropic_provider, body))

    assert set(anthropic_server.app.requests[-1]) == {"model", "messages", "max_tokens"}


def test_every_chat_field_validation_knows_is_translated_taken_or_refused_by_value():
    """A field chat validation comes to know is decided for Anthropic and Bedrock too, not refused by default."""
    assert TRANSLATED_FIELDS.isdisjoint(UNTRANSLATED_PARAMETERS)
    assert TRANSLATED_FIELDS | set(UNTRANSLATED_PARAMETERS) == {"model", "messages", *FIELD_CHECKS}


@pytest.mark.parametrize(("messages", "param"), LEGACY_FUNCTION_HISTORIES)
def test_legacy_function_calling_in_the_history_is_refused_naming_the_message(
    anthropic_server, anthropic_provider, messages, param
):
    """The assistant's function_call and the function message used to be dropped (the model saw the question without
    the call or its result), or sent with a role Anthropic refuses."""
    body = {"model": "claude-test", "messages": [*messages, user("And tomorrow?")]}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(upstream.chat_completion(anthropic_provider, body))

    assert_refused_naming(refused.value, param=param, model="claude-test", api=API)
    assert anthropic_server.app.requests == []


def test_a_null_function_call_on_an_assistant_message_is_taken(anthropic_server, anthropic_provider):
    assistant = {"role": "assistant", "content": "Hi", "function_call": None}
    body = {"model": "claude-test", "messages": [user("Hello"), assistant, user("Again")]}

    run(upstream.chat_completion(anthropic_provider, body))

    assert [message["role"] for message in anthropic_server.app.requests[-1]["messages"]] == [
        "user",
        "assistant",
        "user",
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("part", FILE_PARTS, ids=["file_data", "file_id"])
def test_a_file_part_is_refused_naming_its_path_before_any_call(anthropic_server, anthropic_provider, part, stream):
    """A file part used to be dropped: the model answered about a document it never saw, billed in full."""
    body = {"model": "claude-test", "messages": with_file(part), "stream": stream}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(
            collect_stream_of(anthropic_provider, body)
            if stream
            else upstream.chat_completion(anthropic_provider, body)
        )

    assert_part_refused(refused.value, param="messages[2].content[1].type", kind="file", model="claude-test", api=API)
    assert anthropic_server.app.requests == []


@pytest.mark.parametrize("answer", REFUSED_ANSWERS, ids=["refusal part", "refusal field"])
def test_an_assistants_refusal_in_the_history_is_sent_as_the_text_it_said(anthropic_server, anthropic_provider, answer):
    """It used to be dropped: the model saw a question it had never answered."""
    body = {"model": "claude-test", "messages": [user("Pick a lock."), answer, user("Then how do locks work?")]}

    run(upstream.chat_completion(anthropic_provider, body))

    sent = anthropic_server.app.requests[-1]["messages"]
    assert sent[1] == {"role": "assistant", "content": [{"type": "text", "text": "I can't help with that."}]}


# About 1,800 tokens: over the 1,024 a prefix of Claude Sonnet 4 must hold to be cached.
LONG_REFUSAL = "I can't help with picking that lock. " * 200


@pytest.mark.parametrize(
    "answer",
    [
        {"role": "assistant", "content": [{"type": "refusal", "refusal": LONG_REFUSAL}]},
        {"role": "assistant", "content": "", "refusal": LONG_REFUSAL},
    ],
    ids=["refusal part", "refusal field"],
)
def test_a_refusal_in_the_history_counts_toward_the_prefix_the_gateway_caches(
    anthropic_server, anthropic_provider, answer
):
    body = {"model": "claude-sonnet-4-20250514", "messages": [user("Pick a lock."), answer, user("Why not?")]}

    run(upstream.chat_completion(anthropic_provider, body, provider_cache="auto"))

    history_end = anthropic_server.app.requests[-1]["messages"][1]["content"][-1]
    assert history_end == {"type": "text", "text": LONG_REFUSAL, "cache_control": {"type": "ephemeral"}}


def test_consecutive_turns_of_one_role_are_merged_as_anthropic_requires(anthropic_server, anthropic_provider):
    body = {
        "model": "claude-test",
        "messages": [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}],
    }

    reply = run(upstream.chat_completion(anthropic_provider, body))

    assert len(anthropic_server.app.requests[-1]["messages"]) == 1
    assert reply.body["choices"][0]["message"]["content"] == "Echo: first second"


def cached_prompt_body(stream: bool = False) -> dict:
    # About 1,400 tokens: over the 1,024 a prompt must hold to be cached.
    long_context = "The policy handbook says many things. " * 150
    body = {
        "model": "claude-3-5-sonnet-20241022",
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": long_context, "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": "Summarise the handbook"},
        ],
    }
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def test_usage_counts_cache_reads_and_writes_in_prompt_tokens(anthropic_server, anthropic_provider):
    first = run(upstream.chat_completion(anthropic_provider, cached_prompt_body()))
    second = run(upstream.chat_completion(anthropic_provider, cached_prompt_body()))

    assert anthropic_server.app.requests[-1]["system"][0]["cache_control"] == {"type": "ephemeral"}
    written, read = first.body["usage"], second.body["usage"]
    assert written["prompt_tokens_details"]["cache_write_tokens"] > 1400
    assert written["prompt_tokens_details"]["cached_tokens"] == 0
    assert read["prompt_tokens_details"]["cached_tokens"] == written["prompt_tokens_details"]["cache_write_tokens"]
    assert read["prompt_tokens_details"]["cache_write_tokens"] == 0
    # prompt_tokens counts every input token, cached or not, as OpenAI reports it.
    assert read["prompt_tokens"] == written["prompt_tokens"] > written["prompt_tokens_details"]["cache_write_tokens"]
    assert read["total_tokens"] == read["prompt_tokens"] + read["completion_tokens"]


def test_stream_of_text_ends_with_usage_and_done(anthropic_server, anthropic_provider):
    run(upstream.chat_completion(anthropic_provider, cached_prompt_body()))

    events = run(collect_stream_of(anthropic_provider, cached_prompt_body(stream=True)))

    chunks = chunks_of(events)
    assert anthropic_server.app.requests[-1]["stream"] is True
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert streamed_text(chunks) == "Echo: Summarise the handbook"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"] > 1400
    assert usage_chunk["usage"]["completion_tokens"] == 4


def test_stream_without_include_usage_has_no_usage_chunk(anthropic_provider):
    body = {"model": "claude-test", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    chunks = chunks_of(run(collect_stream_of(anthropic_provider, body)))

    assert not any("usage" in chunk for chunk in chunks)


def test_stream_of_a_tool_call(anthropic_provider):
    body = {
        "model": "claude-test",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    chunks = chunks_of(run(collect_stream_of(anthropic_provider, body)))

    calls = [call for chunk in chunks for choice in chunk["choices"] for call in choice["delta"].get("tool_calls", [])]
    assert calls[0]["id"] == "toolu_01" and calls[0]["function"]["name"] == "get_weather"
    assert orjson.loads("".join(call["function"]["arguments"] for call in calls)) == {"city": "Paris"}
    assert {call["index"] for call in calls} == {0}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_overloaded_529_is_a_server_side_rejection(anthropic_provider):
    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(
            upstream.chat_completion(
                anthropic_provider, {"model": "claude-overloaded", "messages": [{"role": "user", "content": "hi"}]}
            )
        )

    assert excinfo.value.upstream_status == 529
    assert "Overloaded" in excinfo.value.message


def test_overloaded_as_first_stream_event_fails_the_open(anthropic_provider):
    body = {"model": "claude-stream-overloaded", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(upstream.open_chat_stream(anthropic_provider, body))

    assert excinfo.value.upstream_status == 529


def test_stream_cut_short_has_no_done(anthropic_provider):
    body = {"model": "claude-stream-break", "messages": [{"role": "user", "content": "a b c d"}], "stream": True}

    events = run(collect_stream_of(anthropic_provider, body))

    assert events and "data: [DONE]" not in events


def test_a_stream_cut_short_keeps_the_usage_reported_at_its_start(monkeypatch, anthropic_server, anthropic_provider):
    monkeypatch.setattr(anthropic_server.app, "break_streams", True)

    async def cut_stream_usage() -> dict | None:
        stream = await upstream.open_chat_stream(anthropic_provider, cached_prompt_body(stream=True))
        events = await collect_stream(stream)
        assert "data: [DONE]" not in events
        return stream.partial_usage()

    written, read = run(cut_stream_usage()), run(cut_stream_usage())

    assert written["prompt_tokens"] == read["prompt_tokens"] > 1400
    assert written["prompt_tokens_details"]["cache_write_tokens"] == read["prompt_tokens_details"]["cached_tokens"]
    assert written["prompt_tokens_details"]["cache_write_tokens"] > 1400
    assert written["prompt_tokens_details"]["cached_tokens"] == read["prompt_tokens_details"]["cache_write_tokens"] == 0


def test_invalid_request_and_bad_key_carry_the_provider_message(anthropic_server, anthropic_provider):
    bad_order = {"model": "claude-test", "messages": [{"role": "assistant", "content": "I start"}]}
    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(upstream.chat_completion(anthropic_provider, bad_order))
    assert excinfo.value.upstream_status == 400
    assert "roles must alternate" in excinfo.value.message

    wrong_key = provider_entry("anthropic", anthropic_provider.base_url, api_key="sk-ant-wrong")
    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(
            upstream.chat_completion(
                wrong_key, {"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}
            )
        )
    assert excinfo.value.upstream_status == 401 and "invalid x-api-key" in excinfo.value.message


def test_retry_after_is_read_from_a_rejection(anthropic_server, anthropic_provider):
    anthropic_server.app.failures.append((429, {"retry-after": "7"}))

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(
            upstream.chat_completion(
                anthropic_provider, {"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}
            )
        )

    assert excinfo.value.upstream_status == 429 and excinfo.value.retry_after == 7.0


def test_timeout_and_connection_errors(anthropic_server):
    slow = provider_entry("anthropic", f"{anthropic_server.url}/v1", api_key="sk-ant-test", timeout=0.3)
    with pytest.raises(upstream.UpstreamTimeout):
        run(upstream.chat_completion(slow, {"model": "claude-stall", "messages": [{"role": "user", "content": "hi"}]}))

    closed = provider_entry("anthropic", f"http://127.0.0.1:{free_port()}/v1", api_key="sk-ant-test")
    with pytest.raises(upstream.UpstreamConnectionError):
        run(
            upstream.open_chat_stream(closed, {"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]})
        )


def test_a_malformed_message_or_usage_is_an_invalid_response(anthropic_provider):
    def call(model):
        return run(upstream.chat_completion(anthropic_provider, {"model": model, "messages": [user("hi")]}))

    with pytest.raises(upstream.UpstreamInvalidResponse) as excinfo:
        call("claude-malformed-usage")
    assert "usage.output_tokens is -3, not a count of tokens" in excinfo.value.message

    with pytest.raises(upstream.UpstreamInvalidResponse) as excinfo:
        call("claude-malformed-content")
    assert excinfo.value.code == "upstream_invalid_response"


def test_a_malformed_stream_event_or_usage_is_an_invalid_response_from_events(anthropic_provider):
    def read(model):
        body = {"model": model, "messages": [user("one two three")], "stream": True}
        body["stream_options"] = {"include_usage": True}
        return run(collect_stream_of(anthropic_provider, body))

    with pytest.raises(upstream.UpstreamInvalidResponse) as excinfo:
        read("claude-malformed-usage")
    assert "usage.output_tokens is -3" in excinfo.value.message

    with pytest.raises(upstream.UpstreamInvalidResponse) as excinfo:
        read("claude-malformed-content")
    assert "not a JSON object" in excinfo.value.message


def test_an_answer_that_reports_no_usage_has_none_answered_or_streamed(anthropic_provider):
    assert_no_usage_answered_or_streamed(anthropic_provider, "claude-no-usage")
