"""The Bedrock adapter, through boto3 with endpoint_url, against a loopback Converse server."""

import asyncio
import base64

import orjson
import pytest

from routing import upstream
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
    collect_stream_of,
    provider_entry,
    streamed_text,
    user,
    with_file,
)
from tests.servers import free_port


def test_text_reply_with_system_prompt_and_inference_config(bedrock_server, bedrock_provider):
    body = {
        "model": "anthropic.claude-3-haiku-20240307-v1:0",
        "messages": [{"role": "system", "content": "Be brief."}, user("Hello there")],
        "max_tokens": 100,
        "temperature": 0.1,
        "top_p": 0.5,
        "stop": ["END", "STOP"],
    }

    reply = run(upstream.chat_completion(bedrock_provider, body))

    sent = bedrock_server.app.requests[-1]
    assert sent["modelId"] == "anthropic.claude-3-haiku-20240307-v1:0"
    assert sent["system"] == [{"text": "Be brief."}]
    assert sent["messages"] == [{"role": "user", "content": [{"text": "Hello there"}]}]
    assert sent["inferenceConfig"] == {
        "maxTokens": 100,
        "temperature": 0.1,
        "topP": 0.5,
        "stopSequences": ["END", "STOP"],
    }
    assert reply.body["choices"][0]["message"]["content"] == "Echo: Hello there"
    assert reply.body["choices"][0]["finish_reason"] == "stop"
    assert orjson.loads(reply.raw) == reply.body
    # Signed with the provider's own key pair, not whatever the machine has.
    assert "Credential=AKIDTESTONLY/" in bedrock_server.app.authorizations[-1]


def test_top_k_goes_to_claude_as_a_field_of_its_request_and_is_refused_for_other_models(
    bedrock_server, bedrock_provider
):
    claude = {"model": "anthropic.claude-3-haiku-20240307-v1:0", "messages": [user("Hello")], "top_k": 5}

    run(upstream.chat_completion(bedrock_provider, claude))
    run(upstream.chat_completion(bedrock_provider, {**claude, "top_k": -1}))  # vLLM's "no cut": nothing to send
    with pytest.raises(upstream.RequestRefused) as excinfo:
        run(upstream.chat_completion(bedrock_provider, {**claude, "model": "amazon.nova-lite-v1:0"}))

    assert bedrock_server.app.requests[0]["additionalModelRequestFields"] == {"top_k": 5}
    assert "additionalModelRequestFields" not in bedrock_server.app.requests[1]
    refused = excinfo.value
    assert (refused.upstream_status, refused.param, refused.code) == (400, "top_k", "unsupported_parameter")
    assert "only Claude models take it" in refused.message
    assert len(bedrock_server.app.requests) == 2


@pytest.mark.parametrize("model", ["anthropic.claude-3-haiku-20240307-v1:0", "amazon.nova-lite-v1:0"])
@pytest.mark.parametrize(("param", "value"), ASKING_FOR_SOMETHING, ids=asking_ids(ASKING_FOR_SOMETHING))
def test_a_parameter_converse_cannot_take_is_refused_naming_it_before_any_call(
    bedrock_server, bedrock_provider, param, value, model
):
    """Such a parameter used to be dropped: the client got a 200 answer without what it asked for."""
    body = {"model": model, "messages": [user("Hello")], param: value}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(upstream.chat_completion(bedrock_provider, body))

    assert_refused_naming(refused.value, param=param, model=model, api="Bedrock's Converse API")
    assert bedrock_server.app.requests == []


def test_a_streamed_request_is_refused_before_any_call_too(bedrock_server, bedrock_provider):
    body = {"model": CLAUDE, "messages": [user("Hello")], "response_format": {"type": "json_object"}, "stream": True}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(collect_stream_of(bedrock_provider, body))

    assert refused.value.param == "response_format" and bedrock_server.app.requests == []


def test_parallel_tool_calls_off_is_refused_where_tools_are_sent(bedrock_server, bedrock_provider):
    """Converse's tool choice cannot turn parallel calls off; under tool_choice none no tool is sent, so it asks
    nothing."""
    body = {"model": CLAUDE, "messages": [user("Weather?")], "tools": [WEATHER_TOOL], "parallel_tool_calls": False}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(upstream.chat_completion(bedrock_provider, body))
    run(upstream.chat_completion(bedrock_provider, {**body, "tool_choice": "none"}))
    run(upstream.chat_completion(bedrock_provider, {**body, "parallel_tool_calls": True}))

    assert (refused.value.param, refused.value.code) == ("parallel_tool_calls", "unsupported_parameter")
    without_tools, with_tools = bedrock_server.app.requests
    assert "toolConfig" not in without_tools and with_tools["toolConfig"]["tools"]


def test_the_values_that_ask_for_nothing_are_taken_and_not_sent(bedrock_server, bedrock_provider):
    body = {"model": CLAUDE, "messages": [user("Hello")], **ASKING_FOR_NOTHING}

    run(upstream.chat_completion(bedrock_provider, body))

    assert set(bedrock_server.app.requests[-1]) == {"modelId", "messages"}


API = "Bedrock's Converse API"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(("name", "value"), UNTRANSLATED_FIELDS, ids=asking_ids(UNTRANSLATED_FIELDS))
def test_a_field_the_translation_does_not_know_is_refused_naming_it_before_any_call(
    bedrock_server, bedrock_provider, name, value, stream
):
    """Such a field used to be dropped: a 200 answer that ignored it, where an OpenAI-compatible upstream is sent it."""
    body = {"model": CLAUDE, "messages": [user("Hello")], name: value, "stream": stream}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(collect_stream_of(bedrock_provider, body) if stream else upstream.chat_completion(bedrock_provider, body))

    assert_field_refused(refused.value, name=name, model=CLAUDE, api=API)
    assert bedrock_server.app.requests == []


def test_the_chat_fields_that_ask_nothing_of_converse_are_taken_and_not_sent(bedrock_server, bedrock_provider):
    """`user` among them: Converse has no end-user id."""
    body = {"model": CLAUDE, "messages": [user("Hello")], **NO_OP_FIELDS, "user": "customer-7"}

    run(upstream.chat_completion(bedrock_provider, body))

    assert set(bedrock_server.app.requests[-1]) == {"modelId", "messages"}


@pytest.mark.parametrize(("messages", "param"), LEGACY_FUNCTION_HISTORIES)
def test_legacy_function_calling_in_the_history_is_refused_naming_the_message(
    bedrock_server, bedrock_provider, messages, param
):
    """The assistant's function_call and the function message used to be dropped, or sent with a role Converse
    refuses."""
    body = {"model": CLAUDE, "messages": [*messages, user("And tomorrow?")]}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(upstream.chat_completion(bedrock_provider, body))

    assert_refused_naming(refused.value, param=param, model=CLAUDE, api=API)
    assert bedrock_server.app.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("part", FILE_PARTS, ids=["file_data", "file_id"])
def test_a_file_part_is_refused_naming_its_path_before_any_call(bedrock_server, bedrock_provider, part, stream):
    """A file part used to be dropped: the model answered about a document it never saw, billed in full."""
    body = {"model": CLAUDE, "messages": with_file(part), "stream": stream}

    with pytest.raises(upstream.RequestRefused) as refused:
        run(collect_stream_of(bedrock_provider, body) if stream else upstream.chat_completion(bedrock_provider, body))

    assert_part_refused(refused.value, param="messages[2].content[1].type", kind="file", model=CLAUDE, api=API)
    assert bedrock_server.app.requests == []


@pytest.mark.parametrize("answer", REFUSED_ANSWERS, ids=["refusal part", "refusal field"])
def test_an_assistants_refusal_in_the_history_is_sent_as_the_text_it_said(bedrock_server, bedrock_provider, answer):
    """It used to be dropped: the model saw a question it had never answered."""
    body = {"model": CLAUDE, "messages": [user("Pick a lock."), answer, user("Then how do locks work?")]}

    run(upstream.chat_completion(bedrock_provider, body))

    sent = bedrock_server.app.requests[-1]["messages"]
    assert sent[1] == {"role": "assistant", "content": [{"text": "I can't help with that."}]}


def test_default_credential_chain_when_no_credential_is_stored(bedrock_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    provider = provider_entry("bedrock", bedrock_server.url, region="eu-west-1", name="bedrock-env")

    run(upstream.chat_completion(provider, {"model": "amazon.nova-lite-v1:0", "messages": [user("hi")]}))

    authorization = bedrock_server.app.authorizations[-1]
    assert "Credential=AKIDFROMENVIRONMENT/" in authorization and "/eu-west-1/bedrock/" in authorization


def test_images_are_sent_as_bytes(bedrock_server, bedrock_provider):
    content = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}]

    reply = run(upstream.chat_completion(bedrock_provider, {"model": "nova", "messages": [user(content)]}))

    image = bedrock_server.app.requests[-1]["messages"][0]["content"][1]["image"]
    assert image["format"] == "png"
    assert image["source"]["bytes"] == PNG_DATA_URL.split(",", 1)[1]
    assert base64.b64decode(image["source"]["bytes"]).startswith(b"\x89PNG")
    assert reply.body["choices"][0]["message"]["content"] == "Echo: Describe [image]"


def test_image_by_url_is_refused_before_any_call(bedrock_server, bedrock_provider):
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(upstream.chat_completion(bedrock_provider, {"model": "nova", "messages": [user(content)]}))

    assert excinfo.value.upstream_status == 400 and "data: URLs" in excinfo.value.message
    assert bedrock_server.app.requests == []


def test_tool_call_and_tool_result_round_trip(bedrock_server, bedrock_provider):
    first = run(
        upstream.chat_completion(
            bedrock_provider,
            {
                "model": "nova",
                "messages": [user("Weather in Paris?")],
                "tools": [WEATHER_TOOL],
                "tool_choice": "required",
            },
        )
    )

    tool_config = bedrock_server.app.requests[-1]["toolConfig"]
    assert tool_config["tools"][0]["toolSpec"]["inputSchema"] == {"json": WEATHER_TOOL["function"]["parameters"]}
    assert tool_config["toolChoice"] == {"any": {}}
    message = first.body["choices"][0]["message"]
    (call,) = message["tool_calls"]
    assert first.body["choices"][0]["finish_reason"] == "tool_calls"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}

    second = run(
        upstream.chat_completion(
            bedrock_provider,
            {
                "model": "nova",
                "messages": [
                    user("Weather in Paris?"),
                    message,
                    {"role": "tool", "tool_call_id": call["id"], "content": "18C"},
                ],
                "tools": [WEATHER_TOOL],
            },
        )
    )

    sent = bedrock_server.app.requests[-1]["messages"]
    assert sent[1]["content"] == [
        {"toolUse": {"toolUseId": call["id"], "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    assert sent[2]["content"] == [{"toolResult": {"toolUseId": call["id"], "content": [{"text": "18C"}]}}]
    assert second.body["choices"][0]["message"]["content"] == "Echo: 18C"


# About 1,400 tokens: over the 1,024 a prefix must hold to be cached.
LONG_SYSTEM = "The policy handbook says many things. " * 150
CLAUDE = "anthropic.claude-3-7-sonnet-20250219-v1:0"


def client_marked_body(**options) -> dict:
    system = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    return {"model": CLAUDE, "messages": [{"role": "system", "content": system}, user("hi there")], **options}


def test_a_clients_cache_control_is_a_cache_point_and_usage_counts_cache_tokens(bedrock_server, bedrock_provider):
    first = run(upstream.chat_completion(bedrock_provider, client_marked_body()))
    second = run(upstream.chat_completion(bedrock_provider, client_marked_body()))

    assert bedrock_server.app.requests[-1]["system"] == [{"text": LONG_SYSTEM}, {"cachePoint": {"type": "default"}}]
    prefix = len(LONG_SYSTEM) // 4
    written, read = first.body["usage"], second.body["usage"]
    assert written["prompt_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": prefix}
    assert read["prompt_tokens_details"] == {"cached_tokens": prefix, "cache_write_tokens": 0}
    # prompt_tokens counts every input token, cached or not, as OpenAI reports it.
    assert read["prompt_tokens"] == written["prompt_tokens"] == -(-len(LONG_SYSTEM + "hi there") // 4)
    assert read["total_tokens"] == read["prompt_tokens"] + read["completion_tokens"]


def test_stream_of_text_with_usage(bedrock_provider):
    run(upstream.chat_completion(bedrock_provider, client_marked_body()))
    body = client_marked_body(stream=True, stream_options={"include_usage": True})

    chunks = chunks_of(run(collect_stream_of(bedrock_provider, body)))

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed_text(chunks) == "Echo: hi there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["prompt_tokens_details"]["cached_tokens"] == len(LONG_SYSTEM) // 4


def test_stream_of_a_tool_call(bedrock_provider):
    body = {"model": "nova", "messages": [user("Weather?")], "tools": [WEATHER_TOOL], "stream": True}

    chunks = chunks_of(run(collect_stream_of(bedrock_provider, body)))

    calls = [call for chunk in chunks for choice in chunk["choices"] for call in choice["delta"].get("tool_calls", [])]
    assert calls[0]["id"] == "tooluse_01" and calls[0]["function"]["name"] == "get_weather"
    assert orjson.loads("".join(call["function"]["arguments"] for call in calls)) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any("usage" in chunk for chunk in chunks)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("model_context_window_exceeded", "length"),
        ("malformed_model_output", "malformed_model_output"),
        ("malformed_tool_use", "malformed_tool_use"),
    ],
)
def test_an_answer_cut_by_the_context_window_finishes_with_length_and_a_malformed_one_keeps_its_stop_reason(
    bedrock_provider, stop_reason, finish_reason
):
    """Each used to read "stop", which the cache takes for a whole answer."""
    body = {"model": f"nova-stop-{stop_reason}", "messages": [user("one two three")]}

    reply = run(upstream.chat_completion(bedrock_provider, body))
    chunks = chunks_of(run(collect_stream_of(bedrock_provider, {**body, "stream": True})))

    assert reply.body["choices"][0]["finish_reason"] == finish_reason
    finished = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"]]
    assert finished == [finish_reason]


def test_errors_map_to_upstream_errors(bedrock_server, bedrock_provider):
    def call(model, provider=bedrock_provider):
        return run(upstream.chat_completion(provider, {"model": model, "messages": [user("hi")]}))

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        call("nova-throttle")
    assert excinfo.value.upstream_status == 429 and "ThrottlingException" in excinfo.value.message

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        call("nova-unavailable")
    assert excinfo.value.upstream_status == 503

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(
            upstream.chat_completion(
                bedrock_provider, {"model": "nova", "messages": [{"role": "assistant", "content": "x"}]}
            )
        )
    assert excinfo.value.upstream_status == 400 and "alternate" in excinfo.value.message

    slow = provider_entry("bedrock", bedrock_server.url, api_key="AKIDTESTONLY:s", region="us-east-1", timeout=0.3)
    with pytest.raises(upstream.UpstreamTimeout):
        call("nova-stall", slow)

    closed = provider_entry("bedrock", f"http://127.0.0.1:{free_port()}", api_key="AKIDTESTONLY:s", region="us-east-1")
    with pytest.raises(upstream.UpstreamConnectionError):
        call("nova", closed)


def test_stream_exception_before_any_event_fails_the_open(bedrock_provider):
    body = {"model": "nova-stream-exception", "messages": [user("hi")], "stream": True}

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(upstream.open_chat_stream(bedrock_provider, body))

    assert excinfo.value.upstream_status == 503


def test_stream_exception_midway_raises_from_events(bedrock_provider):
    body = {"model": "nova-stream-midfail", "messages": [user("one two three four")], "stream": True}

    async def read():
        stream = await upstream.open_chat_stream(bedrock_provider, body)
        received = []
        try:
            async for event in stream.events():
                received.append(event)
        finally:
            await stream.aclose()

    with pytest.raises(upstream.UpstreamRejected) as excinfo:
        run(read())
    assert excinfo.value.upstream_status == 500 and "model failed" in excinfo.value.message


def test_a_stalled_bedrock_call_leaves_the_event_loop_free(bedrock_server):
    """While boto3 waits on a stalled call, other work on the loop keeps running."""
    slow = provider_entry("bedrock", bedrock_server.url, api_key="AKIDTESTONLY:s", region="us-east-1", timeout=0.5)

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        try:
            await upstream.chat_completion(slow, {"model": "nova-stall", "messages": [user("hi")]})
        except upstream.UpstreamTimeout:
            pass
        finally:
            ticking.cancel()
        return ticks

    # About 25 ticks fit in the half-second stall; a blocked loop would manage none.
    assert run(scenario()) >= 10


def test_closing_a_stream_early_stops_reading(bedrock_provider):
    body = {"model": "nova", "messages": [user("many words " * 50)], "stream": True}

    async def read_two():
        stream = await upstream.open_chat_stream(bedrock_provider, body)
        events = stream.events()
        first = [await anext(events), await anext(events)]
        await events.aclose()
        await stream.aclose()
        return first

    first, second = run(read_two())
    assert orjson.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    assert orjson.loads(second[6:])["choices"][0]["delta"]["content"] == "Echo:"


def test_malformed_usage_is_an_invalid_response_answered_or_streamed(bedrock_provider):
    body = {"model": "nova-malformed-usage", "messages": [user("hi there")]}

    with pytest.raises(upstream.UpstreamInvalidResponse) as excinfo:
        run(upstream.chat_completion(bedrock_provider, body))
    assert "usage.outputTokens is -3, not a count of tokens" in excinfo.value.message

    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with pytest.raises(upstream.UpstreamInvalidResponse):
        run(collect_stream_of(bedrock_provider, streamed))


def test_an_answer_that_reports_no_usage_has_none_answered_or_streamed(bedrock_provider):
    assert_no_usage_answered_or_streamed(bedrock_provider, "nova-no-usage")
