"""Strict checks of a chat completion body, each failure an OpenAI-shaped 400 naming the parameter's path
(``messages[2].role``, ``tools[0].function.name``).

Every field the gateway or a provider adapter reads is checked for type and range here, so nothing downstream
(token counting, routing, caps, compression, cache keys, worst-case pricing, the Anthropic and Bedrock request
translation) meets a shape it cannot handle. Fields the gateway does not know pass through for the upstream to judge,
but for those known to be billed beyond the catalog's prices (UNPRICED_PARAMETERS), which are refused.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from billing.models import CUSTOMER_MAX_LENGTH
from core.db import unstorable_part
from llmops.gateway.errors import GatewayError, invalid_request
from routing.max_tokens import MAX_TOKENS_FIELDS

MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# The content parts OpenAI accepts in a message of each role.
PART_TYPES_BY_ROLE = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}
MAX_TOKENS_LIMIT = 1_000_000
TOP_K_LIMIT = 1_000_000
MAX_CHOICES = 128
MAX_TOOLS = 128
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
LOGIT_BIAS_LIMIT = 100
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_MODEL_NAME_CHARS = 256
SHOWN_VALUE_CHARS = 64
# Parameters billed beyond the catalog's token prices (audio output, web search calls, priority processing): a
# budget could not bound what they cost, so they are refused rather than passed through. A router upstream (OpenRouter,
# a LiteLLM proxy) reads fields of its own that answer with another model than the one the ledger prices, or add paid
# features; any other field the gateway does not know is passed through, so these are named here.
OPENROUTER_MODELS = "OpenRouter may answer with another model"
LITELLM_MODELS = "a LiteLLM proxy may answer with another model"
ANOTHER_PRICE = "billed at that model's price, not the catalog's"
UNPRICED_PARAMETERS = {
    "audio": "audio output is billed at audio token prices the catalog does not hold",
    "web_search_options": "web search is billed per search call, which the catalog does not price",
    "models": f"{OPENROUTER_MODELS} of this list, {ANOTHER_PRICE}",
    "route": f"{OPENROUTER_MODELS} of its fallback route, {ANOTHER_PRICE}",
    "preset": f"{OPENROUTER_MODELS} or provider of the preset, {ANOTHER_PRICE}",
    "provider": "OpenRouter's provider routing picks who serves the model and at what price, which the catalog does "
    "not hold",
    "plugins": "OpenRouter's plugins (web search, file parsing) are billed per use, which the catalog does not price",
    "fallbacks": f"{LITELLM_MODELS} of this list, {ANOTHER_PRICE}",
    "context_window_fallback_dict": f"{LITELLM_MODELS} for a long prompt, {ANOTHER_PRICE}",
    "user_config": f"{LITELLM_MODELS} or deployment of this router config, {ANOTHER_PRICE}",
    "num_retries": "a LiteLLM proxy retries the call itself, and a try billed before it failed is never reported",
}
# Fields a LiteLLM proxy that takes client-side credentials obeys: the call, with the key the proxy holds for the
# provider, would go where the client says, billed to an account the catalog does not price.
REDIRECTING_PARAMETERS = {
    name: "a LiteLLM proxy that takes client-side credentials would send the call, and its provider key, elsewhere"
    for name in ("api_base", "base_url", "api_key", "api_version")
}
REFUSED_PARAMETERS = {**UNPRICED_PARAMETERS, **REDIRECTING_PARAMETERS}
# "fast" is the SDK's other name for priority processing.
UNPRICED_SERVICE_TIERS = frozenset({"priority", "fast"})
UNPRICED_AUDIO_INPUT = "audio input is billed at audio token prices the catalog does not hold"
# An image sent at its original resolution is not scaled down first, so no tile count bounds its tokens.
UNBOUNDED_IMAGE_DETAIL = "original"
# OpenAI's (the `openai` SDK's) but those refused above: a provider is the judge of which one a model takes.
OFFERED_SERVICE_TIERS = ("auto", "default", "flex", "scale")

Check = Callable[[str, object], None]
JSON_TYPES = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "an array"))


def _json_type(value) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in JSON_TYPES if isinstance(value, kind)), "an object")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 3] + "..."


def _listed(choices) -> str:
    return ", ".join(f"'{choice}'" for choice in choices)


def _type_error(param: str, expected: str, value) -> GatewayError:
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _value_error(param: str, message: str) -> GatewayError:
    return invalid_request(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def _missing(param: str) -> GatewayError:
    return invalid_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _out_of_range(param: str, value, low: str, high: str) -> GatewayError:
    return _value_error(param, f"{value}. It must be between {low} and {high}.")


@dataclass(frozen=True, slots=True)
class Wording:
    """How a failed check is put to the client: each a 400 naming the parameter, in OpenAI's words here (``OPENAI``);
    /v1/messages puts the same checks in Anthropic's (llmops.gateway.messages.validation)."""

    missing: Callable[[str], GatewayError]
    # (param, what was expected, the value)
    wrong_type: Callable[[str, str, object], GatewayError]
    # (param, what is wrong)
    invalid: Callable[[str, str], GatewayError]
    # (param, the value, the lowest and the highest allowed, as shown)
    out_of_range: Callable[[str, object, str, str], GatewayError]


OPENAI = Wording(missing=_missing, wrong_type=_type_error, invalid=_value_error, out_of_range=_out_of_range)


def _string(param: str, value, *, wording: Wording = OPENAI) -> str:
    if not isinstance(value, str):
        raise wording.wrong_type(param, "a string", value)
    return value


def _boolean(param: str, value) -> None:
    if not isinstance(value, bool):
        raise _type_error(param, "a boolean", value)


def _integer(param: str, value, *, low: int | None = None, high: int | None = None, wording: Wording = OPENAI) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise wording.wrong_type(param, "an integer", value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise wording.out_of_range(param, value, str(low), str(high))


def _number(param: str, value, *, low: float, high: float, wording: Wording = OPENAI) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise wording.wrong_type(param, "a number", value)
    if not low <= value <= high:
        raise wording.out_of_range(param, value, f"{low:g}", f"{high:g}")


def _object(param: str, value, *, wording: Wording = OPENAI) -> dict:
    if not isinstance(value, dict):
        raise wording.wrong_type(param, "an object", value)
    return value


def _model_name(value, *, wording: Wording = OPENAI) -> str:
    """The ``model`` of a request: a name the gateway can echo in response headers (x-llmops-route), where a control
    character would break the answer."""
    if value is None:
        raise wording.missing("model")
    if not isinstance(value, str) or not value.strip():
        raise wording.wrong_type("model", "a non-empty string", value)
    if len(value) > MAX_MODEL_NAME_CHARS or not value.isprintable():
        raise wording.invalid("model", f"must be a model name of at most {MAX_MODEL_NAME_CHARS} printable characters.")
    return value


def _array(param: str, value, item: Check | None = None, *, max_items: int | None = None) -> None:
    if not isinstance(value, list):
        raise _type_error(param, "an array", value)
    if max_items is not None and len(value) > max_items:
        raise _value_error(param, f"{len(value)} items. At most {max_items} are allowed.")
    if item is not None:
        for index, element in enumerate(value):
            item(f"{param}[{index}]", element)


def _choice(param: str, value, choices) -> None:
    if not isinstance(value, str):
        raise _type_error(param, f"one of {_listed(choices)}", value)
    if value not in choices:
        raise _value_error(param, f"{_shown(value)}. Supported values are: {_listed(choices)}.")


def _fields(param: str, value: dict, checks: dict[str, Check], *, required: tuple[str, ...] = ()) -> None:
    """Check the named fields of an object: those in ``required`` must be present and not null, the others only
    when present and not null."""
    for name, check in checks.items():
        field = value.get(name)
        if field is None:
            if name in required:
                raise _missing(f"{param}.{name}")
            continue
        check(f"{param}.{name}", field)


def _shape(checks: dict[str, Check], *, required: tuple[str, ...] = ()) -> Check:
    """A check of an object with the given fields."""

    def check(param: str, value) -> None:
        _fields(param, _object(param, value), checks, required=required)

    return check


_text_part = _shape({"type": partial(_choice, choices=("text",)), "text": _string}, required=("type", "text"))
_function_definition = _shape(
    {"name": _string, "description": _string, "parameters": _object, "strict": _boolean}, required=("name",)
)
PART_FIELD_CHECKS: dict[str, Check] = {
    "text": _string,
    "image_url": _shape(
        {"url": _string, "detail": partial(_choice, choices=("auto", "low", "high", UNBOUNDED_IMAGE_DETAIL))},
        required=("url",),
    ),
    "input_audio": _shape({"data": _string, "format": _string}, required=("data", "format")),
    "file": _shape({"file_id": _string, "file_data": _string, "filename": _string}),
    "refusal": _string,
}
_tool_call = _shape(
    {
        "id": _string,
        "type": partial(_choice, choices=("function",)),
        "function": _shape({"name": _string, "arguments": _string}, required=("name", "arguments")),
    },
    required=("id", "function"),
)
_named_function = _shape({"name": _string}, required=("name",))
_json_schema = _shape(
    {"name": _string, "description": _string, "schema": _object, "strict": _boolean}, required=("name",)
)
MESSAGE_FIELD_CHECKS: dict[str, Check] = {
    "name": _string,
    "refusal": _string,
    "tool_call_id": _string,
    "tool_calls": partial(_array, item=_tool_call),
    "function_call": _shape({"name": _string, "arguments": _string}, required=("name",)),
}


def _content_part(param: str, part, *, role: str) -> None:
    part = _object(param, part)
    kind = part.get("type")
    if kind is None:
        raise _missing(f"{param}.type")
    allowed = PART_TYPES_BY_ROLE[role]
    if isinstance(kind, str) and kind in PART_FIELD_CHECKS and kind not in allowed:
        raise _value_error(f"{param}.type", f"{_shown(kind)} parts are not allowed in a message with role '{role}'.")
    _choice(f"{param}.type", kind, allowed)
    _fields(param, part, {kind: PART_FIELD_CHECKS[kind], "cache_control": _object}, required=(kind,))
    if kind == "input_audio":
        raise _unsupported(f"{param}.type", UNPRICED_AUDIO_INPUT)
    if kind == "image_url" and not part["image_url"]["url"]:
        raise _value_error(f"{param}.image_url.url", "an empty string. It must be a URL or a data URL of the image.")
    if kind == "image_url" and part["image_url"].get("detail") == UNBOUNDED_IMAGE_DETAIL:
        why = "an image at its original resolution bills tokens that no tile count bounds"
        raise _unsupported(f"{param}.image_url.detail", why)
    if kind == "file" and not (part["file"].get("file_id") or part["file"].get("file_data")):
        message = f"'{param}.file' must have 'file_id' or 'file_data'."
        raise invalid_request(message, param=f"{param}.file", code="missing_required_parameter")


def _message(param: str, message) -> None:
    message = _object(param, message)
    role = message.get("role")
    if role is None:
        raise _missing(f"{param}.role")
    _choice(f"{param}.role", role, MESSAGE_ROLES)
    content = message.get("content")
    may_omit_content = role == "assistant" and (message.get("tool_calls") or message.get("function_call"))
    if content is None and not may_omit_content:
        raise _missing(f"{param}.content")
    if isinstance(content, list):
        if not content and not may_omit_content:
            raise invalid_request(
                f"Invalid '{param}.content': empty array. Expected an array with minimum length 1.",
                param=f"{param}.content",
                code="empty_array",
            )
        for index, part in enumerate(content):
            _content_part(f"{param}.content[{index}]", part, role=role)
    elif content is not None and not isinstance(content, str):
        raise _type_error(f"{param}.content", "a string or an array of content parts", content)
    _fields(param, message, MESSAGE_FIELD_CHECKS, required=("tool_call_id",) if role == "tool" else ())


def _stop(param: str, value) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _type_error(param, "a string or an array of strings", value)
    _array(param, value, _string, max_items=MAX_STOP_SEQUENCES)


def _tool_choice(param: str, value) -> None:
    if isinstance(value, str):
        _choice(param, value, ("none", "auto", "required"))
        return
    if not isinstance(value, dict):
        raise _type_error(param, "'none', 'auto', 'required' or an object naming a function", value)
    _fields(
        param,
        value,
        {"type": partial(_choice, choices=("function",)), "function": _named_function},
        required=("type", "function"),
    )


def _function_call(param: str, value) -> None:
    if isinstance(value, str):
        _choice(param, value, ("none", "auto"))
        return
    if not isinstance(value, dict):
        raise _type_error(param, "'none', 'auto' or an object naming a function", value)
    _named_function(param, value)


def _response_format(param: str, value) -> None:
    value = _object(param, value)
    _fields(
        param, value, {"type": partial(_choice, choices=("text", "json_object", "json_schema"))}, required=("type",)
    )
    if value["type"] == "json_schema":
        _fields(param, value, {"json_schema": _json_schema}, required=("json_schema",))


def _prediction_content(param: str, value) -> None:
    if isinstance(value, list):
        _array(param, value, _text_part)
    elif not isinstance(value, str):
        raise _type_error(param, "a string or an array of text parts", value)


def _logit_bias(param: str, value) -> None:
    for token, bias in _object(param, value).items():
        if not isinstance(bias, int | float) or isinstance(bias, bool) or not abs(bias) <= LOGIT_BIAS_LIMIT:
            limits = f"between {-LOGIT_BIAS_LIMIT} and {LOGIT_BIAS_LIMIT}"
            raise _value_error(param, f"the bias of token {_shown(token)} must be a number {limits}.")


def validate_metadata(param: str, value) -> None:
    """OpenAI's shape of ``metadata`` (chat completions, batches): at most 16 pairs of strings, keys up to 64
    characters, values up to 512."""
    value = _object(param, value)
    if len(value) > MAX_METADATA_PAIRS:
        raise _value_error(param, f"{len(value)} pairs. At most {MAX_METADATA_PAIRS} are allowed.")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise _value_error(param, f"the key {_shown(key)} is longer than {MAX_METADATA_KEY_CHARS} characters.")
        if not isinstance(item, str):
            raise _type_error(f"{param}.{key}", "a string", item)
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise _value_error(f"{param}.{key}", f"longer than {MAX_METADATA_VALUE_CHARS} characters.")


def validate_customer(param: str, value) -> None:
    """An end customer's id (the OpenAI `user` field, or the x-llmops-customer header): a string of at most
    CUSTOMER_MAX_LENGTH printable characters, so it can be stored, grouped by and echoed back as it was sent."""
    _string(param, value)
    if len(value) > CUSTOMER_MAX_LENGTH or not value.isprintable():
        raise _value_error(
            param,
            f"an end customer's id is at most {CUSTOMER_MAX_LENGTH} printable characters (no control characters).",
        )


def _stream_options(param: str, value) -> None:
    _fields(param, _object(param, value), {"include_usage": _boolean, "include_obfuscation": _boolean})


def _tool(param: str, value) -> None:
    _fields(
        param,
        _object(param, value),
        {"type": partial(_choice, choices=("function",)), "function": _function_definition},
        required=("type", "function"),
    )


# What OpenAI refuses without `tools` (a provider would refuse it too, after the gateway had admitted the request).
TOOLS_ONLY_FIELDS = ("tool_choice", "parallel_tool_calls")


def _service_tier(param: str, value) -> None:
    """One of OpenAI's tiers, and not one billed above the catalog's prices."""
    if isinstance(value, str) and value in UNPRICED_SERVICE_TIERS:
        raise _unsupported(param, f"the {value} tier is billed above the catalog's prices")
    _choice(param, value, OFFERED_SERVICE_TIERS)


FIELD_CHECKS: dict[str, Check] = {
    "stream": _boolean,
    "stream_options": _stream_options,
    **dict.fromkeys(MAX_TOKENS_FIELDS, partial(_integer, low=1, high=MAX_TOKENS_LIMIT)),
    "n": partial(_integer, low=1, high=MAX_CHOICES),
    "best_of": partial(_integer, low=1, high=MAX_CHOICES),
    "temperature": partial(_number, low=0.0, high=2.0),
    "top_p": partial(_number, low=0.0, high=1.0),
    # Not OpenAI's, but vLLM's, OpenRouter's and Anthropic's; -1 is vLLM's "no cut", as leaving it out is.
    "top_k": partial(_integer, low=-1, high=TOP_K_LIMIT),
    "presence_penalty": partial(_number, low=-2.0, high=2.0),
    "frequency_penalty": partial(_number, low=-2.0, high=2.0),
    "seed": _integer,
    "logprobs": _boolean,
    "top_logprobs": partial(_integer, low=0, high=MAX_TOP_LOGPROBS),
    "logit_bias": _logit_bias,
    "stop": _stop,
    "user": validate_customer,
    "metadata": validate_metadata,
    "store": _boolean,
    "tools": partial(_array, item=_tool, max_items=MAX_TOOLS),
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "functions": partial(_array, item=_function_definition, max_items=MAX_TOOLS),
    "function_call": _function_call,
    "response_format": _response_format,
    "prediction": _shape(
        {"type": partial(_choice, choices=("content",)), "content": _prediction_content}, required=("type", "content")
    ),
    "modalities": partial(_array, item=partial(_choice, choices=("text", "audio"))),
    "service_tier": _service_tier,
    "reasoning_effort": _string,
    "verbosity": _string,
    "prompt_cache_key": _string,
    "safety_identifier": _string,
}


def validate_model(body) -> None:
    """A JSON object naming its `model`: the start of every /v1 body's checks."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    _model_name(body.get("model"))


def validate_chat_request(body) -> dict:
    validate_model(body)
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", param="messages", code="empty_array")
    for index, message in enumerate(messages):
        _message(f"messages[{index}]", message)
    for name, check in FIELD_CHECKS.items():
        if body.get(name) is not None:
            check(name, body[name])
    if body.get("stream_options") is not None and not body.get("stream"):
        raise invalid_request(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options", code="invalid_value"
        )
    for name in TOOLS_ONLY_FIELDS:
        if body.get(name) is not None and not body.get("tools"):
            raise invalid_request(
                f"Invalid value for '{name}': '{name}' is only allowed when 'tools' are specified.",
                param=name,
                code="invalid_value",
            )
    _refuse_unpriced(body)
    return body


def _unsupported(param: str, why: str) -> GatewayError:
    return invalid_request(
        f"'{param}' is not supported by this gateway: {why}, so its cost could not be held within budgets.",
        param=param,
        code="unsupported_parameter",
    )


def _refuse_unpriced(body: dict) -> None:
    # The body's few fields looked up in the list, not the list's in the body: this runs on every request.
    for param in body:
        if param in REFUSED_PARAMETERS and body[param] is not None:
            raise _unsupported(param, REFUSED_PARAMETERS[param])
    if "audio" in (body.get("modalities") or ()):
        raise _unsupported("modalities", UNPRICED_PARAMETERS["audio"])


def validate_storable(value, *, param: str = "") -> None:
    """Refuse what is stored to run later (a job's body, a batch line, batch metadata) when part of it would not come
    back from the database as it was sent (``core.db.unstorable_part``); ``param`` is the path of ``value``."""
    unstorable = unstorable_part(value)
    if unstorable is not None:
        where, why = unstorable
        path = ".".join(part for part in (param, where) if part)
        message = f"'{path}' {why}, which could not be stored and given back exactly to run later."
        raise invalid_request(message, param=path, code="invalid_value")
