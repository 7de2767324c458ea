"""/v1/messages at the edge: an Anthropic body checked as Anthropic checks it and turned into the chat completion the
pipeline runs; the chat answer (body or stream) turned back into Anthropic's Message and events."""

import asyncio

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from billing.ledger.costs import Usage
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.validation import validate_chat_request
from llmops.gateway.errors import GatewayError
from llmops.gateway.messages.answers import MessageStream, anthropic_message
from llmops.gateway.messages.errors import anthropic_error_response
from llmops.gateway.messages.validation import chat_request_from_message
from routing.providers.anthropic import messages_request
from routing.providers.base import named_stop_sequence
from routing.providers.prompt_cache import MAX_CHECKPOINTS
from tenants.authentication import KeyPrincipal

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
DATA_URL = f"data:image/png;base64,{PNG}"
EPHEMERAL = {"type": "ephemeral"}
HI = [{"role": "user", "content": "Hi"}]
BLOCK = "messages.0.content.0"


def body(**fields) -> dict:
    return {"model": "claude-x", "max_tokens": 64, "messages": HI, **fields}


def said(*blocks, role="user") -> dict:
    """A body whose one message has these content blocks."""
    return body(messages=[{"role": role, "content": list(blocks)}])


def text(value: str, **extra) -> dict:
    return {"type": "text", "text": value, **extra}


def image(media_type="image/png", data=PNG, **extra) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}, **extra}


def image_url(url: str, cache_control=None) -> dict:
    """An image as the chat form carries it."""
    part = {"type": "image_url", "image_url": {"url": url}}
    return part | ({"cache_control": cache_control} if cache_control else {})


def image_at(url: str, **extra) -> dict:
    return {"type": "image", "source": {"type": "url", "url": url}, **extra}


def refusal(value) -> GatewayError:
    with pytest.raises(GatewayError) as excinfo:
        chat_request_from_message(value)
    assert excinfo.value.status_code == 400
    return excinfo.value


def test_a_full_request_becomes_the_chat_completion_the_pipeline_runs():
    request = chat_request_from_message(
        body(
            system=[text("You are terse."), text("Rules.", cache_control=EPHEMERAL)],
            messages=[
                {"role": "user", "content": [text("Look:"), image()]},
                {"role": "assistant", "content": "A pixel."},
                {"role": "user", "content": [image_at("https://example.com/a.png", cache_control=EPHEMERAL)]},
                {"role": "assistant", "content": "It is"},
            ],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END"],
            metadata={"user_id": "customer-42"},
            stream=True,
            cache_control=EPHEMERAL,
        )
    )

    assert request == {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": [text("You are terse."), text("Rules.", cache_control=EPHEMERAL)]},
            {"role": "user", "content": [text("Look:"), {"type": "image_url", "image_url": {"url": DATA_URL}}]},
            {"role": "assistant", "content": "A pixel."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}, "cache_control": EPHEMERAL}
                ],
            },
            {"role": "assistant", "content": [text("It is", cache_control=EPHEMERAL)]},  # the automatic breakpoint
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "user": "customer-42",
        "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    assert validate_chat_request(request) is request


def test_the_anthropic_adapter_sends_back_what_the_client_sent():
    """Through the chat form and the outbound adapter, an Anthropic upstream gets the request as the client made it:
    the system blocks with their cache breakpoint, the images, the prefill, the stop sequences and the end user."""
    client_body = body(
        system=[text("Rules.", cache_control=EPHEMERAL)],
        messages=[{"role": "user", "content": [image()]}, {"role": "assistant", "content": [text("It is")]}],
        stop_sequences=["END"],
        metadata={"user_id": "customer-42"},
    )  # fmt: skip

    sent = messages_request(chat_request_from_message(client_body))

    assert sent == {
        "model": "claude-x",
        "max_tokens": 64,
        "system": [text("Rules.", cache_control=EPHEMERAL)],
        "messages": [{"role": "user", "content": [image()]}, {"role": "assistant", "content": [text("It is")]}],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "customer-42"},
    }  # fmt: skip


def test_an_empty_final_assistant_message_is_no_prefill():
    request = chat_request_from_message(
        body(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}])
    )

    assert request["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("value", "param", "code", "words"),
    [
        ([], None, "invalid_json", "JSON object"),
        ({"max_tokens": 5, "messages": HI}, "model", "missing_required_parameter", "Field required"),
        ({"model": "m", "messages": HI}, "max_tokens", "missing_required_parameter", "Field required"),
        (body(max_tokens=0), "max_tokens", "invalid_value", "between 1 and"),
        (body(max_tokens="5"), "max_tokens", "invalid_type", "integer"),
        (body(max_tokens=True), "max_tokens", "invalid_type", "integer"),
        (body(messages=[]), "messages", "empty_array", "at least one message"),
        (body(messages="hi"), "messages", "invalid_type", "array"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role", "invalid_value", "'user' or"),
        (body(messages=[{"role": "user"}]), "messages.0.content", "missing_required_parameter", "Field required"),
        (body(messages=[{"role": "user", "content": "x", "name": "b"}]), "messages.0.name", "invalid_value", "Extra"),
        (body(messages=[{"role": "user", "content": ""}]), "messages.0", "invalid_value", "non-empty content"),
        (body(messages=[{"role": "assistant", "content": []}]), "messages.0", "invalid_value", "non-empty content"),
        (said(text(" \n")), "messages.0.content.0.text", "invalid_value", "non-whitespace"),
        (said({"text": "x"}), "messages.0.content.0.type", "missing_required_parameter", "Field required"),
        (said({"type": ["text"], "text": "x"}), "messages.0.content.0.type", "invalid_type", "string, not an array"),
        (said({"type": {"text": 1}}), "messages.0.content.0.type", "invalid_type", "string, not an object"),
        (said({"type": "x" * 500}), "messages.0.content.0.type", "invalid_value", "'xxx"),
        (body(messages=[{"role": ["user"], "content": "x"}]), "messages.0.role", "invalid_type", "string"),
        (said({"type": "image", "source": {"type": ["url"]}}), f"{BLOCK}.source.type", "invalid_type", "string"),
        (said(image(media_type=["image/png"])), f"{BLOCK}.source.media_type", "invalid_type", "string"),
        (body(system=[{"type": ["text"], "text": "x"}]), "system.0.type", "invalid_type", "string"),
        (said(text("x", cache_control={"type": {}})), f"{BLOCK}.cache_control.type", "invalid_type", "string"),
        (said(text("x", cache_control={**EPHEMERAL, "ttl": 5})), f"{BLOCK}.cache_control.ttl", "invalid_type", "str"),
        (said(image(), role="assistant"), "messages.0.content.0.type", "invalid_value", "role 'assistant'"),
        (said(image("image/bmp")), "messages.0.content.0.source.media_type", "invalid_value", "image/png"),
        (said(image_at("")), f"{BLOCK}.source.url", "invalid_value", "at least 1 character"),
        (said(image(data="")), f"{BLOCK}.source.data", "invalid_value", "at least 1 character"),
        (body(system="Rules.", messages=[*HI, {"role": "user", "content": [text("x"), image_at("")]}]),
         "messages.1.content.1.source.url", "invalid_value", "at least 1 character"),
        (body(system=[text("x", cache_control={})]), "system.0.cache_control.type", "invalid_value", "ephemeral"),
        (body(system=[image()]), "system.0.type", "invalid_value", "'text'"),
        (body(system=5), "system", "invalid_type", "string or an array"),
        (body(temperature=1.5), "temperature", "invalid_value", "between 0 and 1"),
        (body(top_p=-0.1), "top_p", "invalid_value", "between 0 and 1"),
        (body(top_k=-1), "top_k", "invalid_value", "between 0"),
        (body(stop_sequences="END"), "stop_sequences", "invalid_type", "array"),
        (body(stop_sequences=["a", "b", "c", "d", "e"]), "stop_sequences", "invalid_value", "at most 4"),
        (body(metadata={"user_id": 7}), "metadata.user_id", "invalid_type", "string"),
        (body(metadata={"user_id": "u" * 257}), "metadata.user_id", "invalid_value", "at most 256"),
        (body(metadata={"user_id": "cust\x08omer"}), "metadata.user_id", "invalid_value", "control characters"),
        (body(metadata={"session": "s"}), "metadata.session", "invalid_value", "Extra inputs"),
        (body(stream="yes"), "stream", "invalid_type", "boolean"),
        (body(frequency_penalty=1), "frequency_penalty", "invalid_value", "Extra inputs are not permitted"),
        (body(**{"x" * 100: 1}), "x" * 61 + "...", "invalid_value", "Extra inputs are not permitted"),
        (body(model="a\nb"), "model", "invalid_value", "printable"),
    ],
)  # fmt: skip
def test_each_wrong_field_is_a_400_naming_its_path(value, param, code, words):
    error = refusal(value)

    assert (error.param, error.code) == (param, code)
    assert words in error.message
    if param:
        assert error.message.startswith(f"{param}: ")


@pytest.mark.parametrize(
    ("value", "param", "names"),
    [
        (body(tools=[{"name": "t", "input_schema": {"type": "object"}}]), "tools", "tool use"),
        (body(tool_choice={"type": "auto"}), "tool_choice", "tool use"),
        (body(thinking={"type": "enabled", "budget_tokens": 1024}), "thinking", "extended thinking"),
        (body(service_tier="auto"), "service_tier", "priority tier"),
        (body(speed="fast"), "speed", "fast mode"),
        (body(output_config={"effort": "high"}), "output_config", "structured outputs"),
        (said({"type": "document", "source": {}}), "messages.0.content.0.type", "'document' blocks"),
        (said({"type": "tool_result", "tool_use_id": "t"}), "messages.0.content.0.type", "'tool_result' blocks"),
        (said({"type": "thinking"}, role="assistant"), "messages.0.content.0.type", "'thinking' blocks"),
        (said({"type": "image", "source": {"type": "file"}}), "messages.0.content.0.source.type", "file id"),
        (said(text("x", citations=[{"type": "char_location"}])), "messages.0.content.0.citations", "citations"),
    ],
)  # fmt: skip
def test_what_the_gateway_cannot_carry_is_refused_by_name(value, param, names):
    error = refusal(value)

    assert (error.param, error.code) == (param, "unsupported_parameter")
    assert names in error.message and "not supported" in error.message


@pytest.mark.parametrize(
    ("value", "param"),
    [
        (body(system=[text("x", cache_control={"type": "ephemeral", "ttl": "1h"})]), "system.0.cache_control.ttl"),
        (said(image(cache_control={"type": "ephemeral", "ttl": "1h"})), "messages.0.content.0.cache_control.ttl"),
        (body(cache_control={"type": "ephemeral", "ttl": "1h"}), "cache_control.ttl"),
    ],
)
def test_a_one_hour_cache_write_is_refused_as_no_budget_could_bound_its_price(value, param):
    error = refusal(value)

    assert (error.param, error.code) == (param, "unsupported_parameter")
    assert "1h" in error.message and "twice the input price" in error.message


def test_a_cache_lifetime_is_five_minutes_or_unsaid():
    five_minutes = {"type": "ephemeral", "ttl": "5m"}

    request = chat_request_from_message(body(system=[text("Rules.", cache_control=five_minutes)]))

    assert request["messages"][0]["content"] == [text("Rules.", cache_control=five_minutes)]
    assert refusal(body(cache_control={"type": "ephemeral", "ttl": "10m"})).message == (
        "cache_control.ttl: Input should be '5m'"
    )


@pytest.mark.parametrize(
    ("messages", "last_content"),
    [
        (HI, [text("Hi", cache_control=EPHEMERAL)]),
        ([{"role": "user", "content": [text("Look:"), image()]}], [text("Look:"), image_url(DATA_URL, EPHEMERAL)]),
        (
            [{"role": "user", "content": [text("a", cache_control={"type": "ephemeral", "ttl": "5m"})]}],
            [text("a", cache_control={"type": "ephemeral", "ttl": "5m"})],  # the block's own breakpoint stays
        ),
        ([*HI, {"role": "assistant", "content": ""}], [text("Hi", cache_control=EPHEMERAL)]),  # no empty prefill
    ],
)
def test_a_top_level_cache_control_is_a_breakpoint_on_the_last_block_as_anthropic_applies_it(messages, last_content):
    request = chat_request_from_message(body(system="Rules.", messages=messages, cache_control=EPHEMERAL))

    assert request["messages"][-1]["content"] == last_content
    assert request["messages"][0] == {"role": "system", "content": "Rules."}
    sent = messages_request(request)["messages"][-1]["content"][-1]
    assert sent["cache_control"] == last_content[-1]["cache_control"]


def test_top_k_is_carried_to_an_anthropic_upstream():
    request = chat_request_from_message(body(top_k=5))

    assert request["top_k"] == 5
    assert validate_chat_request(request) is request
    assert messages_request(request)["top_k"] == 5


def test_options_that_ask_for_nothing_the_gateway_cannot_give_are_dropped():
    request = chat_request_from_message(body(tools=[], service_tier="standard_only", speed="standard"))

    assert request == chat_request_from_message(body())


def test_counting_takes_no_max_tokens_and_never_streams():
    request = chat_request_from_message({"model": "m", "messages": HI, "stream": True}, counting=True)

    assert request == {"model": "m", "messages": HI}


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20).filter(str.strip)
# The 5-minute cache only: the 1-hour one is refused (/v1/messages and the provider adapters), billed above the
# catalog's cache-write price.
cache_controls = st.none() | st.just(EPHEMERAL) | st.just({"type": "ephemeral", "ttl": "5m"})


def _block(kind: str, text: str, cache_control) -> dict:
    if kind == "image":
        block = {"type": "image", "source": {"type": "url", "url": f"https://example.com/{len(text)}.png"}}
    else:
        block = {"type": "text", "text": text}
    return block | ({"cache_control": cache_control} if cache_control else {})


user_blocks = st.builds(_block, st.sampled_from(["text", "image"]), texts, cache_controls)
assistant_blocks = st.builds(_block, st.just("text"), texts, cache_controls)


def turns(role: str, blocks) -> st.SearchStrategy:
    return st.fixed_dictionaries({"role": st.just(role), "content": texts | st.lists(blocks, min_size=1, max_size=3)})


messages = st.lists(turns("user", user_blocks) | turns("assistant", assistant_blocks), min_size=1, max_size=5)
optional = {
    "system": st.none() | texts | st.lists(st.builds(_block, st.just("text"), texts, cache_controls), max_size=3),
    "temperature": st.none() | st.floats(0, 1),
    "top_p": st.none() | st.floats(0, 1),
    "top_k": st.none() | st.integers(0, 500),
    "stop_sequences": st.none() | st.lists(texts, max_size=4),
    "metadata": st.none() | st.fixed_dictionaries({"user_id": st.none() | texts.filter(str.isprintable)}),
    "stream": st.none() | st.booleans(),
    "cache_control": cache_controls,
}


@given(
    messages=messages,
    max_tokens=st.integers(1, 1_000_000),
    extra=st.fixed_dictionaries({}, optional=optional),
)
def test_every_body_it_accepts_is_a_valid_chat_completion_and_a_valid_anthropic_request(messages, max_tokens, extra):
    """Nothing downstream ever answers a valid Anthropic body with an error in OpenAI's terms, or breaks on it."""
    request = chat_request_from_message({"model": "claude-x", "max_tokens": max_tokens, "messages": messages, **extra})
    # Anthropic takes at most four cache_control breakpoints (the adapter refuses more, as it would).
    assume(str(request).count("cache_control") <= MAX_CHECKPOINTS)

    assert validate_chat_request(request) is request
    sent = messages_request(request)
    assert sent["max_tokens"] == max_tokens
    assert sent["messages"] and all(message["content"] for message in sent["messages"])
    assert sent.get("top_k") == extra.get("top_k")
    if extra.get("cache_control"):
        assert "cache_control" in sent["messages"][-1]["content"][-1]


def call() -> GatewayCall:
    principal = KeyPrincipal(
        key_id=1,
        key_prefix="p",
        secret_hash="h",
        tenant_id=1,
        tenant_slug="t",
        team_id=1,
        team_slug="s",
        expires_at=None,
        revoked_at=None,
        tenant_active=True,
        team_active=True,
    )
    made = GatewayCall(principal=principal, request_id="req_0123abcd", requested_model="claude-x")
    made.prompt_tokens_after_compression = 30
    return made


def completion(*, content="Paris.", finish_reason="stop", usage=None, **choice) -> dict:
    message = {"role": "assistant", "content": content}
    return {
        "id": "chatcmpl-1",
        "model": "claude-3-5",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, **choice}],
        "usage": usage,
    }


CACHED_USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
}
# The same in Anthropic's terms: input_tokens is what is neither read from nor written to the cache.
CACHED_MESSAGE_USAGE = {
    "input_tokens": 10,
    "output_tokens": 7,
    "cache_creation_input_tokens": 30,
    "cache_read_input_tokens": 60,
}


def test_an_answer_is_a_message_with_usage_in_anthropic_terms():
    message = anthropic_message(call(), completion(usage=CACHED_USAGE), stop_sequences=[])

    assert message == {
        "id": "msg_0123abcd",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5",
        "content": [{"type": "text", "text": "Paris."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": CACHED_MESSAGE_USAGE,
    }


@pytest.mark.parametrize(
    ("finish_reason", "matched", "stop_sequences", "expected"),
    [
        ("stop", None, ["END"], ("end_turn", None)),
        ("length", None, [], ("max_tokens", None)),
        ("content_filter", None, [], ("refusal", None)),
        ("stop", "END", ["END"], ("stop_sequence", "END")),
        ("stop", "OTHER", ["END"], ("end_turn", None)),
        ("length", "END", ["END"], ("max_tokens", None)),
        ("malformed_model_output", None, [], ("malformed_model_output", None)),
        (None, None, [], ("end_turn", None)),
    ],
)
def test_stop_reasons(finish_reason, matched, stop_sequences, expected):
    """``matched``: the stop sequence the upstream said ended the answer (GatewayCall.stop_sequence)."""
    answered = call()
    answered.stop_sequence = matched

    message = anthropic_message(answered, completion(finish_reason=finish_reason), stop_sequences=stop_sequences)

    assert (message["stop_reason"], message["stop_sequence"]) == expected


@pytest.mark.parametrize(("stop_reason", "named"), [("END", "END"), (50256, None), (None, None)])
def test_vllm_names_the_stop_sequence_on_its_choice_not_the_stop_token(stop_reason, named):
    assert named_stop_sequence({"index": 0, "finish_reason": "stop", "stop_reason": stop_reason}) == named


def test_an_answer_without_usage_reports_what_the_ledger_counted_and_empty_content_no_block():
    counted = call()
    counted.settled_usage = Usage(prompt_tokens=12, completion_tokens=0, estimated=True)

    message = anthropic_message(counted, completion(content=None), stop_sequences=[])

    assert message["content"] == []
    assert message["usage"] == {
        "input_tokens": 12,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def chunk(delta=None, finish_reason=None, **extra) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, **extra}]
    return b"data: " + orjson.dumps({"id": "c", "model": "claude-3-5", "choices": choices}) + b"\n\n"


def translated(pieces: list[bytes], stream_call=None) -> list[tuple[str, dict]]:
    async def source():
        for piece in pieces:
            yield piece

    async def collect():
        stream = MessageStream(stream_call or call(), stop_sequences=["END"])
        return b"".join([event async for event in stream.events(source())])

    raw = asyncio.run(collect()).decode()
    events = []
    for event in raw.split("\n\n"):
        if event.startswith("event: "):
            kind, data = event.split("\n", 1)
            events.append((kind.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
        elif event:
            events.append(("comment", {"text": event}))
    return events


def test_a_stream_becomes_anthropic_events_in_their_order():
    usage_chunk = b"data: " + orjson.dumps({"id": "c", "choices": [], "usage": CACHED_USAGE}) + b"\n\n"
    closing = b": x-llmops-cost-usd=0.0000012300\n\ndata: [DONE]\n\n"
    whole = chunk({"role": "assistant", "content": ""}) + chunk({"content": "Par"}) + chunk({"content": "is"})
    # Split anywhere, even inside an event: the events come out whole.
    pieces = [whole[:10], whole[10:77], whole[77:], chunk({}, "stop"), usage_chunk, closing]
    streamed = call()
    streamed.stop_sequence = "END"  # as the pipeline's relay notes it, when the upstream says which

    events = translated(pieces, streamed)

    assert [kind for kind, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "comment",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["id"], start["model"], start["content"]) == ("msg_0123abcd", "claude-3-5", [])
    assert start["usage"]["input_tokens"] == 30  # the gateway's count, until the answer's usage is known
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [data["delta"] for kind, data in events if kind == "content_block_delta"] == [
        {"type": "text_delta", "text": "Par"},
        {"type": "text_delta", "text": "is"},
    ]
    assert events[5][1]["text"] == ": x-llmops-cost-usd=0.0000012300"
    assert events[7][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
        "usage": CACHED_MESSAGE_USAGE,
    }


def test_a_failure_mid_stream_is_an_error_event():
    failure = {"error": {"message": "provider p did not answer", "type": "api_error", "code": "upstream_timeout"}}
    pieces = [chunk({"role": "assistant", "content": "Hel"}), b"data: " + orjson.dumps(failure) + b"\n\n"]

    events = translated(pieces)

    assert [kind for kind, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1] == {
        "type": "error",
        "error": {
            "type": "timeout_error",
            "message": "provider p did not answer",
            "details": {"error_code": "upstream_timeout"},
        },
    }


@pytest.mark.parametrize(
    ("status", "code", "anthropic_status", "error_type"),
    [
        (400, "invalid_value", 400, "invalid_request_error"),
        (401, "invalid_api_key", 401, "authentication_error"),
        (403, "model_not_allowed", 403, "permission_error"),
        (404, "model_not_found", 404, "not_found_error"),
        (413, "request_too_large", 413, "request_too_large"),
        (429, "rate_limit_exceeded", 429, "rate_limit_error"),
        (500, "internal_error", 500, "api_error"),
        (502, "upstream_error", 502, "api_error"),
        (503, "upstream_circuit_open", 529, "overloaded_error"),
        (504, "upstream_timeout", 504, "timeout_error"),
    ],
)
def test_errors_take_anthropic_types_and_statuses(status, code, anthropic_status, error_type):
    response = anthropic_error_response(GatewayError("Nope.", status=status, code=code), request_id="req_1")

    assert response.status_code == anthropic_status
    assert orjson.loads(response.content) == {
        "type": "error",
        "error": {"type": error_type, "message": "Nope.", "details": {"error_code": code}},
        "request_id": "req_1",
    }
    assert "x-should-retry" not in response
