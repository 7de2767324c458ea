"""Strict checks of a chat completion body, each failure an OpenAI-shaped 400 naming the parameter."""

from llmops.gateway.errors import invalid_request

MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
NUMBER_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
POSITIVE_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "best_of")
CHOICE_FIELDS = ("n", "best_of")
MAX_TOKENS_LIMIT = 1_000_000
MAX_CHOICES = 128
# Parameters billed beyond the catalog's token prices (audio output, web search calls, priority processing): a
# budget could not bound what they cost, so they are refused rather than passed through.
UNPRICED_PARAMETERS = {
    "audio": "audio output is billed at audio token prices the catalog does not hold",
    "web_search_options": "web search is billed per search call, which the catalog does not price",
}
UNPRICED_SERVICE_TIERS = frozenset({"priority"})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_error(param: str, expected: str, value) -> Exception:
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {type(value).__name__}.",
        param=param,
        code="invalid_type",
    )


def _validate_message(index: int, message) -> None:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _type_error(param, "an object", message)
    role = message.get("role")
    if role not in MESSAGE_ROLES:
        raise invalid_request(
            f"Invalid value for '{param}.role': {role!r}. Supported values are: {', '.join(sorted(MESSAGE_ROLES))}.",
            param=f"{param}.role",
            code="invalid_value",
        )
    content = message.get("content")
    may_omit_content = role == "assistant" and (message.get("tool_calls") or message.get("function_call"))
    if content is None and not may_omit_content:
        raise invalid_request(
            f"Missing required parameter: '{param}.content'.",
            param=f"{param}.content",
            code="missing_required_parameter",
        )
    if content is not None and not isinstance(content, (str, list)):
        raise _type_error(f"{param}.content", "a string or an array of content parts", content)
    if isinstance(content, list) and not all(isinstance(part, dict) and "type" in part for part in content):
        raise invalid_request(
            f"Invalid content parts in '{param}.content': each part must be an object with a 'type'.",
            param=f"{param}.content",
            code="invalid_value",
        )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise invalid_request(
            f"Missing required parameter: '{param}.tool_call_id'.",
            param=f"{param}.tool_call_id",
            code="missing_required_parameter",
        )


MAX_MODEL_NAME_CHARS = 256


def validate_chat_request(body) -> dict:
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if model is None:
        raise invalid_request("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _type_error("model", "a non-empty string", model)
    # The name is echoed in response headers (x-llmops-route), where a control character would break the answer.
    if len(model) > MAX_MODEL_NAME_CHARS or not model.isprintable():
        raise invalid_request(
            f"'model' must be a model name of at most {MAX_MODEL_NAME_CHARS} printable characters.",
            param="model",
            code="invalid_value",
        )
    messages = body.get("messages")
    if messages is None:
        raise invalid_request(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", param="messages", code="empty_array")
    for index, message in enumerate(messages):
        _validate_message(index, message)
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise _type_error("stream", "a boolean", body["stream"])
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise _type_error("stream_options", "an object", stream_options)
        if not body.get("stream"):
            raise invalid_request(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options", code="invalid_value"
            )
    for field in POSITIVE_INT_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        if not _is_int(value):
            raise _type_error(field, "an integer", value)
        upper = MAX_CHOICES if field in CHOICE_FIELDS else MAX_TOKENS_LIMIT
        if not 1 <= value <= upper:
            raise invalid_request(
                f"Invalid value for '{field}': {value}. It must be between 1 and {upper}.",
                param=field,
                code="invalid_value",
            )
    for field, (low, high) in NUMBER_RANGES.items():
        value = body.get(field)
        if value is None:
            continue
        if not _is_number(value):
            raise _type_error(field, "a number", value)
        if not low <= value <= high:
            raise invalid_request(
                f"Invalid value for '{field}': {value}. It must be between {low:g} and {high:g}.",
                param=field,
                code="invalid_value",
            )
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _type_error("metadata", "an object", metadata)
    _refuse_unpriced(body)
    return body


def _unsupported(param: str, why: str) -> Exception:
    return invalid_request(
        f"'{param}' is not supported by this gateway: {why}, so its cost could not be held within budgets.",
        param=param,
        code="unsupported_parameter",
    )


def _refuse_unpriced(body: dict) -> None:
    for param, why in UNPRICED_PARAMETERS.items():
        if body.get(param) is not None:
            raise _unsupported(param, why)
    modalities = body.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        raise _unsupported("modalities", UNPRICED_PARAMETERS["audio"])
    if body.get("service_tier") in UNPRICED_SERVICE_TIERS:
        raise _unsupported("service_tier", f"the {body['service_tier']} tier is billed above the catalog's prices")
