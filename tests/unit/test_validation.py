"""Chat body validation: each wrong field is a 400 naming its path, and a body that passes can be handled by everything
downstream that reads it (token counting, routing, caps, compression, cache keys, the guard, worst-case pricing and
the Anthropic and Bedrock request translation)."""

import asyncio
import contextlib
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, reject, settings

from llmops.gateway.chat.validation import validate_chat_request
from llmops.gateway.chat.worst_case import OutputBound
from llmops.gateway.errors import GatewayError
from routing import upstream
from routing.cache.keys import canonical_request, exact_key, is_cacheable, semantic_key
from routing.caps import clamp_max_tokens
from routing.compression import compress_messages
from routing.injection_guard import inspect_messages
from routing.policy import route_request_from_body
from routing.providers.anthropic import messages_request
from routing.providers.bedrock import converse_request
from routing.tokens import count_chat_tokens
from tests.chat_bodies import chat_bodies

HI = [{"role": "user", "content": "hi"}]


def _refusal(body: dict) -> GatewayError:
    with pytest.raises(GatewayError) as refused:
        validate_chat_request(body)
    assert refused.value.status_code == 400 and refused.value.error_type == "invalid_request_error"
    return refused.value


@pytest.mark.parametrize(
    ("messages", "code", "param"),
    [
        ([{"role": ["user"], "content": "hi"}], "invalid_type", "messages[0].role"),
        ([{"role": {"name": "user"}, "content": "hi"}], "invalid_type", "messages[0].role"),
        ([{"role": 5, "content": "hi"}], "invalid_type", "messages[0].role"),
        ([{"content": "hi"}], "missing_required_parameter", "messages[0].role"),
        ([*HI, {"role": "user", "content": "hi", "name": {"a": 1}}], "invalid_type", "messages[1].name"),
        ([{"role": "user", "content": "hi", "name": ["a"]}], "invalid_type", "messages[0].name"),
        ([{"role": "user", "content": 5}], "invalid_type", "messages[0].content"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "invalid_type", "messages[0].content[0].text"),
        (
            [{"role": "user", "content": [{"type": "text"}]}],
            "missing_required_parameter",
            "messages[0].content[0].text",
        ),
        ([{"role": "user", "content": [{"text": "a"}]}], "missing_required_parameter", "messages[0].content[0].type"),
        ([{"role": "user", "content": [{"type": "bogus"}]}], "invalid_value", "messages[0].content[0].type"),
        ([{"role": "user", "content": ["text"]}], "invalid_type", "messages[0].content[0]"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x/a.png"}]}],
            "invalid_type",
            "messages[0].content[0].image_url",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 1}}]}],
            "invalid_type",
            "messages[0].content[0].image_url.url",
        ),
        (
            [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}],
            "invalid_value",
            "messages[0].content[0].type",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": "ephemeral"}]}],
            "invalid_type",
            "messages[0].content[0].cache_control",
        ),
        ([{"role": "tool", "content": "42"}], "missing_required_parameter", "messages[0].tool_call_id"),
        ([{"role": "tool", "content": "42", "tool_call_id": ["a"]}], "invalid_type", "messages[0].tool_call_id"),
        ([{"role": "user", "content": "a", "tool_call_id": {}}], "invalid_type", "messages[0].tool_call_id"),
        ([{"role": "assistant", "tool_calls": 5}], "invalid_type", "messages[0].tool_calls"),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}],
            "invalid_type",
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}],
            "missing_required_parameter",
            "messages[0].tool_calls[0].id",
        ),
        ([{"role": "assistant", "content": "a", "refusal": 1}], "invalid_type", "messages[0].refusal"),
    ],
)
def test_a_wrong_message_field_is_named(messages, code, param):
    refused = _refusal({"model": "m", "messages": messages})

    assert (refused.code, refused.param) == (code, param)
    assert param in refused.message


@pytest.mark.parametrize(
    ("extra", "code", "param"),
    [
        ({"stream": "yes"}, "invalid_type", "stream"),
        ({"stream": True, "stream_options": []}, "invalid_type", "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "invalid_type", "stream_options.include_usage"),
        ({"stream_options": {"include_usage": True}}, "invalid_value", "stream_options"),
        ({"max_tokens": "10"}, "invalid_type", "max_tokens"),
        ({"max_completion_tokens": 0}, "invalid_value", "max_completion_tokens"),
        ({"max_tokens": 1.5}, "invalid_type", "max_tokens"),
        ({"n": True}, "invalid_type", "n"),
        ({"temperature": "0"}, "invalid_type", "temperature"),
        ({"top_p": 1.5}, "invalid_value", "top_p"),
        ({"seed": "1"}, "invalid_type", "seed"),
        ({"logprobs": 1}, "invalid_type", "logprobs"),
        ({"top_logprobs": 21}, "invalid_value", "top_logprobs"),
        ({"logit_bias": {"50256": -101}}, "invalid_value", "logit_bias"),
        ({"logit_bias": {"50256": "1"}}, "invalid_value", "logit_bias"),
        ({"stop": 5}, "invalid_type", "stop"),
        ({"stop": ["a", 5]}, "invalid_type", "stop[1]"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
        ({"user": 5}, "invalid_type", "user"),
        ({"metadata": "x"}, "invalid_type", "metadata"),
        ({"metadata": {"task_type": {"a": 1}}}, "invalid_type", "metadata.task_type"),
        ({"metadata": {"user_tier": 5}}, "invalid_type", "metadata.user_tier"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "invalid_value", "metadata"),
        ({"metadata": {"k": "v" * 513}}, "invalid_value", "metadata.k"),
        ({"tools": {"type": "function"}}, "invalid_type", "tools"),
        ({"tools": [{"type": "function"}]}, "missing_required_parameter", "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"name": 5}}]}, "invalid_type", "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
            "invalid_type",
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "invalid_value", "tools[0].type"),
        ({"tool_choice": "any"}, "invalid_value", "tool_choice"),
        ({"tool_choice": 1}, "invalid_type", "tool_choice"),
        (
            {"tool_choice": {"type": "function", "function": {}}},
            "missing_required_parameter",
            "tool_choice.function.name",
        ),
        ({"parallel_tool_calls": "no"}, "invalid_type", "parallel_tool_calls"),
        # OpenAI refuses these without tools, and so would the provider, after admission.
        ({"tool_choice": "required"}, "invalid_value", "tool_choice"),
        ({"tool_choice": "none", "tools": []}, "invalid_value", "tool_choice"),
        ({"parallel_tool_calls": False}, "invalid_value", "parallel_tool_calls"),
        ({"functions": [{"description": "f"}]}, "missing_required_parameter", "functions[0].name"),
        ({"function_call": {"name": 1}}, "invalid_type", "function_call.name"),
        ({"response_format": "json"}, "invalid_type", "response_format"),
        ({"response_format": {"type": "yaml"}}, "invalid_value", "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "missing_required_parameter", "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": []}}},
            "invalid_type",
            "response_format.json_schema.schema",
        ),
        ({"prediction": {"type": "content", "content": 5}}, "invalid_type", "prediction.content"),
        (
            {"prediction": {"type": "content", "content": [{"type": "text", "text": 5}]}},
            "invalid_type",
            "prediction.content[0].text",
        ),
        ({"modalities": "text"}, "invalid_type", "modalities"),
        ({"service_tier": ["priority"]}, "invalid_type", "service_tier"),
        ({"service_tier": "zzz"}, "invalid_value", "service_tier"),
        ({"messages": [{"role": "user", "content": []}]}, "empty_array", "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]},
            "invalid_value",
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf"}}]}]},
            "missing_required_parameter",
            "messages[0].content[0].file",
        ),
        ({"reasoning_effort": 1}, "invalid_type", "reasoning_effort"),
        ({"store": "yes"}, "invalid_type", "store"),
    ],
)
def test_a_wrong_top_level_field_is_named(extra, code, param):
    refused = _refusal({"model": "m", "messages": HI, **extra})

    assert (refused.code, refused.param) == (code, param)


def test_type_errors_say_what_was_expected_and_what_came_in_json_terms():
    refused = _refusal({"model": "m", "messages": [{"role": ["user"], "content": "hi"}]})

    assert refused.message == (
        "Invalid type for 'messages[0].role': expected one of 'system', 'developer', 'user', 'assistant', 'tool', "
        "'function', but got an array instead."
    )


def test_a_long_wrong_value_is_shortened_in_the_message():
    refused = _refusal({"model": "m", "messages": [{"role": "x" * 10_000, "content": "hi"}]})

    assert len(refused.message) < 300


def test_the_shapes_openai_documents_pass():
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "a"}}]},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 100,
        "temperature": 0,
        "seed": -3,
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"50256": -100},
        "stop": ["\n"],
        "user": "u-1",
        "metadata": {"task_type": "classification", "user_tier": "free"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
        "prediction": {"type": "content", "content": [{"type": "text", "text": "draft"}]},
        "modalities": ["text"],
        "service_tier": "auto",
        "reasoning_effort": "low",
        "store": False,
        "x-provider-extension": {"anything": [1, 2]},
    }

    assert validate_chat_request(body) is body


def _downstream(body: dict) -> None:
    """What reads a validated body on the way to the upstream, with caps small enough to compress."""
    messages = body["messages"]
    count_chat_tokens(messages, model="mock-small")
    route_request_from_body(body, headers={}, tenant_id=1, team_slug="t", prompt_tokens=10)
    clamp_max_tokens(body, cap=100, default=50)
    asyncio.run(compress_messages(messages, budget=20, model="mock-small"))
    inspect_messages(messages, action="flag")
    OutputBound.of(body, model="mock-small")
    request = canonical_request(body)
    exact_key(tenant_id=1, served_model="m", upstream="u", request=request)
    is_cacheable(body, allow_nondeterministic=True)
    semantic_key(request, upstream="u")
    # A parameter neither adapter translates is a clean 400 naming it (unsupported_parameter); Bedrock's own refusals
    # (an image given by URL) a clean 400 upstream_invalid_request.
    with contextlib.suppress(upstream.RequestRefused):
        messages_request(body)
    with contextlib.suppress(upstream.UpstreamRejected):
        converse_request(body)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=chat_bodies("m"))
def test_any_body_is_refused_by_name_or_handled_downstream(body):
    try:
        body = orjson.loads(json.dumps(body))  # as the gateway's parser hands it over (2^70 is a float by then)
    except orjson.JSONDecodeError:
        reject()  # Infinity: refused as invalid JSON before validation
    try:
        validate_chat_request(body)
    except GatewayError as refused:
        assert refused.status_code == 400 and refused.error_type == "invalid_request_error"
        assert refused.param is None or refused.param in refused.message
        return
    _downstream(body)


def test_an_unknown_service_tier_is_told_the_tiers_the_gateway_takes():
    refused = _refusal({"model": "m", "messages": HI, "service_tier": "bogus"})

    assert refused.message.endswith("Supported values are: 'auto', 'default', 'flex', 'scale'.")
