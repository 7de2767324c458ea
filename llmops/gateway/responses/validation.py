"""Strict checks of a Responses API body (OpenAI's `POST /v1/responses`, text in and out), and the chat completion
body it becomes for the chat pipeline.

What the gateway does not do answers a 400 naming the parameter, never silently dropped: tools, stored state
(`previous_response_id`, `conversation`, `store: true`, retrieval), `background`, prompt templates, non-text inputs
and output options beyond text (`code unsupported_parameter` for a parameter, `unsupported_value` for a value of a
parameter it takes otherwise). A field it does not know, at the top or inside an object (`text.format`, an input
item, a content part), is refused the same way, since nothing here could pass it on; a value outside one of OpenAI's
enums is `invalid_value`, as OpenAI answers it.
"""

from collections.abc import Set
from functools import partial

from llmops.gateway.chat.validation import (
    MAX_TOKENS_LIMIT,
    _array,
    _boolean,
    _choice,
    _fields,
    _integer,
    _missing,
    _number,
    _object,
    _shown,
    _string,
    _type_error,
    _value_error,
    validate_metadata,
    validate_model,
)
from llmops.gateway.errors import invalid_request
from llmops.gateway.messages.validation import _field_name

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
# Content parts that are text: an earlier answer's output_text or refusal is taken as input too.
TEXT_PARTS = ("input_text", "output_text", "refusal")
NON_TEXT_PARTS = ("input_image", "input_file", "input_audio")
VERBOSITIES = ("low", "medium", "high")
# OpenAI's (the `openai` SDK's ReasoningEffort); which of them a model takes is its provider's to judge.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
UNKNOWN_FIELD = "it is not a parameter this gateway knows"
# The fields of each object the gateway knows. An earlier answer's output, sent back as input as it came, carries an
# item's `id`, `status` and `phase` and a part's `annotations` and `logprobs`: taken, and not read.
MESSAGE_ITEM_KNOWN = frozenset({"type", "role", "content", "id", "status", "phase"})
PART_KNOWN = {
    "input_text": frozenset({"type", "text"}),
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "refusal": frozenset({"type", "refusal"}),
}
JSON_SCHEMA_FIELDS = {"name": _string, "schema": _object, "description": _string, "strict": _boolean}
TEXT_FORMAT_KNOWN = {
    "text": frozenset({"type"}),
    "json_object": frozenset({"type"}),
    "json_schema": frozenset({"type", *JSON_SCHEMA_FIELDS}),
}
TEXT_FORMATS = tuple(TEXT_FORMAT_KNOWN)
TEXT_FIELDS = {"format": _object, "verbosity": partial(_choice, choices=VERBOSITIES)}
REASONING_FIELDS = {"effort": partial(_choice, choices=REASONING_EFFORTS)}
STREAM_OPTIONS_FIELDS = {"include_obfuscation": _boolean}
# Why each of OpenAI's fields inside an object is refused (a null asks for nothing, and is accepted).
PART_UNSUPPORTED_FIELDS = {
    "input_text": {
        "prompt_cache_breakpoint": "the provider's prompt cache breakpoints are not set through this gateway",
    },
}
REASONING_UNSUPPORTED_FIELDS = {
    "summary": "reasoning summaries are not returned",
    "generate_summary": "reasoning summaries are not returned",
    "context": "reasoning items are not taken as input, so there is no earlier reasoning to render",
    "mode": "the reasoning execution mode is not set through this gateway",
}
STREAM_OPTIONS_UNSUPPORTED_FIELDS = {
    "include_usage": "it is a chat completions option; a Responses stream always carries the usage, in its "
    "`response.completed` event",
}
# Why each parameter the gateway does not take is refused (a value of None, False or [] asks for nothing, and is
# accepted for those marked so below).
UNSUPPORTED_PARAMETERS = {
    "previous_response_id": "responses are not stored, so there is none to continue; send the whole conversation in "
    "`input`",
    "conversation": "conversations are not stored; send the whole conversation in `input`",
    "prompt": "stored prompt templates are not available; send `instructions` and `input`",
    "max_tool_calls": "tools are not supported",
    "top_logprobs": "log probabilities are not returned",
    "context_management": "responses are not stored or compacted",
    "prompt_cache_retention": "the provider's prompt cache retention is not set through this gateway",
}
UNSUPPORTED_VALUES = {
    "store": (False, "responses are not stored, so they cannot be retrieved later; send `store: false`"),
    "background": (False, "background responses are not supported; send `background: false` (or use /api/jobs)"),
}
NOT_TEXT = (
    "only text inputs (input_text, and output_text or refusal for earlier answers) are supported; images, files "
    "and audio are not"
)
NOT_A_MESSAGE = (
    "only message items are supported; tool calls, their outputs, reasoning and references to stored items are not"
)


def unsupported_parameter(param: str, why: str):
    return invalid_request(
        f"'{param}' is not supported by this gateway's Responses API: {why}.",
        param=param,
        code="unsupported_parameter",
    )


def unsupported_value(param: str, why: str):
    return invalid_request(
        f"This value of '{param}' is not supported by this gateway's Responses API: {why}.",
        param=param,
        code="unsupported_value",
    )


def _known_fields(param: str, value: dict, known: Set[str], unsupported: dict[str, str] | None = None) -> None:
    """Refuse a field of ``value`` outside ``known`` (a null asks for nothing, as at the top level), for its reason in
    ``unsupported`` when it has one."""
    if value.keys() <= known:
        return
    for name, field in value.items():
        if field is not None and name not in known:
            why = unsupported.get(name, UNKNOWN_FIELD) if unsupported else UNKNOWN_FIELD
            raise unsupported_parameter(f"{param}.{_field_name(name)}", why)


def _content_part(param: str, part, *, role: str) -> None:
    part = _object(param, part)
    kind = part.get("type")
    if kind is None:
        raise _missing(f"{param}.type")
    if kind in NON_TEXT_PARTS:
        raise unsupported_value(f"{param}.type", NOT_TEXT)
    _choice(f"{param}.type", kind, TEXT_PARTS)
    # A refusal is the model's: only an assistant item (an earlier answer) has one, as in the chat form.
    if kind == "refusal" and role != "assistant":
        raise _value_error(f"{param}.type", f"{_shown(kind)} parts are not allowed in an item with role '{role}'.")
    _known_fields(param, part, PART_KNOWN[kind], PART_UNSUPPORTED_FIELDS.get(kind))
    field = "refusal" if kind == "refusal" else "text"
    _fields(param, part, {field: _string}, required=(field,))


def _input_item(param: str, item) -> None:
    item = _object(param, item)
    kind = item.get("type") or "message"
    if not isinstance(kind, str):
        raise _type_error(f"{param}.type", "a string", kind)
    if kind != "message":
        raise unsupported_value(f"{param}.type", NOT_A_MESSAGE)
    role = item.get("role")
    if role is None:
        raise _missing(f"{param}.role")
    _choice(f"{param}.role", role, MESSAGE_ROLES)
    content = item.get("content")
    if content is None:
        raise _missing(f"{param}.content")
    if isinstance(content, list):
        if not content:
            raise invalid_request(
                f"Invalid '{param}.content': empty array. Expected an array with minimum length 1.",
                param=f"{param}.content",
                code="empty_array",
            )
        for index, part in enumerate(content):
            _content_part(f"{param}.content[{index}]", part, role=role)
    elif not isinstance(content, str):
        raise _type_error(f"{param}.content", "a string or an array of content parts", content)
    _known_fields(param, item, MESSAGE_ITEM_KNOWN)


def _input(param: str, value) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _type_error(param, "a string or an array of input items", value)
    if not value:
        raise invalid_request(f"'{param}' must contain at least one item.", param=param, code="empty_array")
    for index, item in enumerate(value):
        _input_item(f"{param}[{index}]", item)


def _strict_shape(checks: dict, unsupported: dict[str, str] | None = None):
    """A check of an object with the given fields, and no other."""
    known = checks.keys()

    def check(param: str, value) -> None:
        value = _object(param, value)
        _known_fields(param, value, known, unsupported)
        _fields(param, value, checks)

    return check


def _text(param: str, value) -> None:
    value = _object(param, value)
    _known_fields(param, value, TEXT_FIELDS.keys())
    _fields(param, value, TEXT_FIELDS)
    text_format = value.get("format")
    if text_format is None:
        return
    param = f"{param}.format"
    _fields(param, text_format, {"type": partial(_choice, choices=TEXT_FORMATS)}, required=("type",))
    _known_fields(param, text_format, TEXT_FORMAT_KNOWN[text_format["type"]])
    if text_format["type"] == "json_schema":
        _fields(param, text_format, JSON_SCHEMA_FIELDS, required=("name", "schema"))


def _tools(param: str, value) -> None:
    _array(param, value)
    if value:
        raise unsupported_parameter(param, "tools (functions, web search, file search, …) are not supported")


def _tool_choice(param: str, value) -> None:
    if value not in ("auto", "none"):
        raise unsupported_value(param, "tools are not supported, so only 'auto' and 'none' mean anything")


def _include(param: str, value) -> None:
    _array(param, value)
    if value:
        raise unsupported_parameter(param, "no extra output (log probabilities, tool results, …) is returned")


def _truncation(param: str, value) -> None:
    _choice(param, value, ("disabled", "auto"))
    if value == "auto":
        raise unsupported_value(
            param, "the gateway does not drop input items; its routing rules cap or compress long prompts"
        )


FIELD_CHECKS = {
    "instructions": _string,
    "max_output_tokens": partial(_integer, low=1, high=MAX_TOKENS_LIMIT),
    "temperature": partial(_number, low=0.0, high=2.0),
    "top_p": partial(_number, low=0.0, high=1.0),
    "stream": _boolean,
    "stream_options": _strict_shape(STREAM_OPTIONS_FIELDS, STREAM_OPTIONS_UNSUPPORTED_FIELDS),
    "metadata": validate_metadata,
    "user": _string,
    "safety_identifier": _string,
    "prompt_cache_key": _string,
    "service_tier": _string,
    "parallel_tool_calls": _boolean,
    "store": _boolean,
    "background": _boolean,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "text": _text,
    "reasoning": _strict_shape(REASONING_FIELDS, REASONING_UNSUPPORTED_FIELDS),
    "include": _include,
    "truncation": _truncation,
}
KNOWN_FIELDS = frozenset({"model", "input", *FIELD_CHECKS})


def validate_responses_request(body) -> dict:
    validate_model(body)
    for name, value in body.items():
        if value is None:
            continue
        if name in UNSUPPORTED_PARAMETERS:
            raise unsupported_parameter(name, UNSUPPORTED_PARAMETERS[name])
        if name not in KNOWN_FIELDS:
            raise unsupported_parameter(_field_name(name), UNKNOWN_FIELD)
    if body.get("input") is None:
        raise _missing("input")
    _input("input", body["input"])
    for name, check in FIELD_CHECKS.items():
        if body.get(name) is not None:
            check(name, body[name])
    for name, (allowed, why) in UNSUPPORTED_VALUES.items():
        if body.get(name) not in (None, allowed):
            raise unsupported_value(name, why)
    if body.get("stream_options") is not None and not body.get("stream"):
        raise invalid_request(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options", code="invalid_value"
        )
    return body


def _chat_content(content):
    if isinstance(content, str):
        return content
    return [
        {"type": "refusal", "refusal": part["refusal"]}
        if part["type"] == "refusal"
        else {"type": "text", "text": part["text"]}
        for part in content
    ]


def _chat_messages(request: dict) -> list[dict]:
    messages = [{"role": "system", "content": request["instructions"]}] if request.get("instructions") else []
    items = request["input"]
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    return messages + [{"role": item["role"], "content": _chat_content(item["content"])} for item in items]


def _response_format(text_format: dict) -> dict:
    if text_format["type"] != "json_schema":
        return {"type": text_format["type"]}
    schema = {name: text_format[name] for name in ("name", "schema", "description", "strict") if name in text_format}
    return {"type": "json_schema", "json_schema": schema}


# Fields that mean the same in both APIs.
SHARED_FIELDS = ("temperature", "top_p", "metadata", "user", "safety_identifier", "prompt_cache_key", "service_tier")


def chat_body(request: dict) -> dict:
    """The chat completion the validated Responses request asks for. Streamed, the chat pipeline is asked for the
    usage chunk, which the Responses stream's `response.completed` event carries."""
    body = {
        "model": request["model"],
        "messages": _chat_messages(request),
        **{name: request[name] for name in SHARED_FIELDS if request.get(name) is not None},
    }
    if request.get("max_output_tokens") is not None:
        body["max_completion_tokens"] = request["max_output_tokens"]
    text = request.get("text") or {}
    if text.get("format") is not None:
        body["response_format"] = _response_format(text["format"])
    if text.get("verbosity") is not None:
        body["verbosity"] = text["verbosity"]
    if (request.get("reasoning") or {}).get("effort") is not None:
        body["reasoning_effort"] = request["reasoning"]["effort"]
    if request.get("stream"):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body
