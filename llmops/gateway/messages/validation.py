"""A /v1/messages body checked as Anthropic's Messages API checks it, and turned into the chat completion request the
pipeline runs (llmops.gateway.chat): one pipeline, one ledger, two APIs at the edge.

Each failure is a 400 naming the field by Anthropic's dotted path (``messages.1.content.0.text``), worded as
Anthropic words it, by the chat path's own checks (llmops.gateway.chat.validation). What the gateway cannot carry
through the chat completion form (tools, thinking, documents, ...) or price (1-hour cache writes) is refused by name
rather than dropped, so a caller never gets an answer to a different question than it asked, nor a bill no budget
held.

The translation:

- ``system`` (a string or text blocks) becomes the first message, role ``system``; a block's ``cache_control``
  stays on its text part, which the Anthropic adapter sends back as a prompt-cache breakpoint.
- ``messages``: string content as is; ``text`` blocks as text parts and ``image`` blocks (base64 or URL) as
  ``image_url`` parts, each keeping its ``cache_control``. A final assistant message is a prefill, passed on as the
  last message (an Anthropic upstream continues it; an OpenAI-compatible one reads it as context).
- A top-level ``cache_control`` (Anthropic's automatic caching) is applied as Anthropic applies it: a breakpoint on
  the last block of the request (a string content becoming one text part to carry it).
- ``cache_control.ttl`` is "5m" or absent: Anthropic bills a 1-hour cache write at twice the input price, which the
  catalog's cache-write price (the 5-minute one) does not hold.
- ``max_tokens`` (required, as Anthropic requires it), ``temperature``, ``top_p``, ``top_k`` as they are (the chat
  form carries ``top_k`` as vLLM and OpenRouter name it; the Anthropic and Bedrock adapters pass it on to Claude);
  ``stop_sequences`` as ``stop``; ``metadata.user_id`` as the chat request's ``user``; ``stream`` as it is, with the
  usage chunk asked for.
"""

from collections.abc import Callable
from functools import partial

from llmops.gateway.chat import validation as chat_checks
from llmops.gateway.chat.validation import TOP_K_LIMIT, Wording
from llmops.gateway.errors import GatewayError, invalid_request
from routing.max_tokens import SET_FIELD

MAX_TOKENS_LIMIT = 1_000_000
# The chat completion form takes at most four stop sequences (OpenAI's limit).
MAX_STOP_SEQUENCES = 4
MAX_USER_ID_CHARS = 256
MAX_ECHOED_NAME_CHARS = 64
ROLES = ("user", "assistant")
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# The cache lifetimes the catalog prices: its cache-write price is Anthropic's 5-minute one (1.25x input); a 1-hour
# write costs 2x input.
CACHE_TTL = "5m"
LONG_CACHE_TTL = "1h"

SUPPORTED_FIELDS = (
    "model",
    "messages",
    "max_tokens",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "cache_control",
)
TOOLS_UNSUPPORTED = "tool use is not supported on /v1/messages by this gateway; /v1/chat/completions takes tools"
UNSUPPORTED_FIELDS = {
    "tools": TOOLS_UNSUPPORTED,
    "tool_choice": TOOLS_UNSUPPORTED,
    "thinking": "extended thinking is not supported by this gateway",
    "mcp_servers": "MCP servers are not supported by this gateway",
    "container": "code execution containers are not supported by this gateway",
    "output_config": "output configuration (structured outputs, effort) is not supported by this gateway",
    "service_tier": "the priority tier is billed above the catalog's token prices, so a budget could not bound it",
    "speed": "fast mode is billed above the catalog's token prices, so a budget could not bound it",
    "inference_geo": "inference geography is billed above the catalog's token prices, so a budget could not bound it",
}
# Values of those fields that ask for nothing the gateway cannot give: accepted and dropped.
HARMLESS_VALUES = {"tools": [], "service_tier": "standard_only", "speed": "standard"}
UNSUPPORTED_BLOCKS = {
    "tool_use": TOOLS_UNSUPPORTED,
    "tool_result": TOOLS_UNSUPPORTED,
    "server_tool_use": TOOLS_UNSUPPORTED,
    "web_search_tool_result": TOOLS_UNSUPPORTED,
    "document": "documents are not supported by this gateway; send their text as a text block",
    "search_result": "search results are not supported by this gateway; send their text as a text block",
    "thinking": "thinking blocks are not supported by this gateway (extended thinking is not)",
    "redacted_thinking": "thinking blocks are not supported by this gateway (extended thinking is not)",
}
BLOCK_TYPES_BY_ROLE = {"user": ("text", "image"), "assistant": ("text",)}
TEXT_BLOCK_FIELDS = frozenset({"type", "text", "cache_control", "citations"})
IMAGE_BLOCK_FIELDS = frozenset({"type", "source", "cache_control"})
MESSAGE_FIELDS = frozenset({"role", "content"})


def _invalid(path: str, message: str, *, code: str = "invalid_value") -> GatewayError:
    return invalid_request(f"{path}: {message}", param=path, code=code)


def _missing(path: str) -> GatewayError:
    return _invalid(path, "Field required", code="missing_required_parameter")


def _wrong_type(path: str, expected: str, value) -> GatewayError:
    return _invalid(path, f"Input should be {expected}, not {chat_checks._json_type(value)}", code="invalid_type")


def _out_of_range(path: str, value, low: str, high: str) -> GatewayError:
    return _invalid(path, f"Input should be between {low} and {high}, not {value}")


ANTHROPIC = Wording(missing=_missing, wrong_type=_wrong_type, invalid=_invalid, out_of_range=_out_of_range)
# The chat path's checks, worded as Anthropic words them.
_string = partial(chat_checks._string, wording=ANTHROPIC)
_object = partial(chat_checks._object, wording=ANTHROPIC)
_integer = partial(chat_checks._integer, wording=ANTHROPIC)
_number = partial(chat_checks._number, wording=ANTHROPIC)
_model = partial(chat_checks._model_name, wording=ANTHROPIC)


def _unsupported(path: str, why: str) -> GatewayError:
    return _invalid(path, f"not supported: {why}.", code="unsupported_parameter")


def _field_name(name: str) -> str:
    """A field name the client made up, as the error echoes it: bounded."""
    return name if len(name) <= MAX_ECHOED_NAME_CHARS else name[: MAX_ECHOED_NAME_CHARS - 3] + "..."


def _extra_fields(path: str, value: dict, allowed: frozenset[str]) -> None:
    extra = sorted(set(value) - allowed)
    if extra:
        raise _invalid(f"{path}.{_field_name(extra[0])}", "Extra inputs are not permitted")


def _kind(path: str, value: dict, *, required: bool = True) -> str | None:
    """An object's ``type``, checked to be a string before anything looks it up (a list or an object in a table
    lookup would be a TypeError, not a 400)."""
    kind = value.get("type")
    if kind is None:
        if required:
            raise _missing(f"{path}.type")
        return None
    return _string(f"{path}.type", kind)


def _cache_control(path: str, value) -> dict:
    value = _object(path, value)
    _extra_fields(path, value, frozenset({"type", "ttl"}))
    if _kind(path, value, required=False) != "ephemeral":
        raise _invalid(f"{path}.type", "Input should be 'ephemeral'")
    if value.get("ttl") is not None:
        ttl = _string(f"{path}.ttl", value["ttl"])
        if ttl == LONG_CACHE_TTL:
            raise _unsupported(
                f"{path}.ttl",
                f"a {LONG_CACHE_TTL} cache write is billed at twice the input price, above the catalog's cache-write "
                f"price, so a budget could not bound it; leave ttl out or send '{CACHE_TTL}'",
            )
        if ttl != CACHE_TTL:
            raise _invalid(f"{path}.ttl", f"Input should be '{CACHE_TTL}'")
    return value


def _with_cache_control(path: str, block: dict, part: dict) -> dict:
    if block.get("cache_control") is not None:
        part["cache_control"] = _cache_control(f"{path}.cache_control", block["cache_control"])
    return part


def _text_part(path: str, block: dict) -> dict:
    _extra_fields(path, block, TEXT_BLOCK_FIELDS)
    if "text" not in block:
        raise _missing(f"{path}.text")
    text = _string(f"{path}.text", block["text"])
    if not text.strip():
        raise _invalid(f"{path}.text", "text content blocks must contain non-whitespace text")
    if block.get("citations"):
        raise _unsupported(f"{path}.citations", "citations are not supported by this gateway")
    return _with_cache_control(path, block, {"type": "text", "text": text})


def _non_empty(path: str, value) -> str:
    """An image's url or data: the chat form refuses an empty url, and empty data is no image to pay for."""
    if not _string(path, value):
        raise _invalid(path, "String should have at least 1 character")
    return value


def _image_part(path: str, block: dict) -> dict:
    _extra_fields(path, block, IMAGE_BLOCK_FIELDS)
    source = _object(f"{path}.source", block.get("source"))
    kind = _kind(f"{path}.source", source)
    if kind == "base64":
        _extra_fields(f"{path}.source", source, frozenset({"type", "media_type", "data"}))
        media_type = _string(f"{path}.source.media_type", source.get("media_type"))
        if media_type not in IMAGE_MEDIA_TYPES:
            allowed = ", ".join(f"'{name}'" for name in IMAGE_MEDIA_TYPES)
            raise _invalid(f"{path}.source.media_type", f"Input should be {allowed}")
        data = _non_empty(f"{path}.source.data", source.get("data"))
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        _extra_fields(f"{path}.source", source, frozenset({"type", "url"}))
        url = _non_empty(f"{path}.source.url", source.get("url"))
    elif kind == "file":
        raise _unsupported(f"{path}.source.type", "images by file id are not supported by this gateway")
    else:
        raise _invalid(f"{path}.source.type", "Input should be 'base64' or 'url'")
    return _with_cache_control(path, block, {"type": "image_url", "image_url": {"url": url}})


PART_BUILDERS: dict[str, Callable[[str, dict], dict]] = {"text": _text_part, "image": _image_part}


def _content_part(path: str, block, *, role: str) -> dict:
    block = _object(path, block)
    kind = _kind(path, block)
    if kind in UNSUPPORTED_BLOCKS:
        raise _unsupported(f"{path}.type", f"'{kind}' blocks: {UNSUPPORTED_BLOCKS[kind]}")
    if kind not in BLOCK_TYPES_BY_ROLE[role]:
        allowed = " or ".join(f"'{name}'" for name in BLOCK_TYPES_BY_ROLE[role])
        message = f"Input should be {allowed} in a message with role '{role}', not {chat_checks._shown(kind)}"
        raise _invalid(f"{path}.type", message)
    return PART_BUILDERS[kind](path, block)


def _message(path: str, message, *, last: bool) -> dict | None:
    """The chat message of an Anthropic message; None for an empty assistant message ending a conversation (an empty
    prefill), ``last``."""
    message = _object(path, message)
    _extra_fields(path, message, MESSAGE_FIELDS)
    role = message.get("role")
    if role is None:
        raise _missing(f"{path}.role")
    if _string(f"{path}.role", role) not in ROLES:
        raise _invalid(f"{path}.role", "Input should be 'user' or 'assistant'")
    if "content" not in message:
        raise _missing(f"{path}.content")
    content = message["content"]
    if isinstance(content, list):
        content = [_content_part(f"{path}.content.{index}", block, role=role) for index, block in enumerate(content)]
    elif not isinstance(content, str):
        raise _wrong_type(f"{path}.content", "a string or an array of content blocks", content)
    if not content:
        if last and role == "assistant":
            return None
        raise _invalid(path, "all messages must have non-empty content except for the optional final assistant message")
    return {"role": role, "content": content}


def _system(value) -> dict | None:
    if isinstance(value, str):
        return {"role": "system", "content": value} if value else None
    if not isinstance(value, list):
        raise _wrong_type("system", "a string or an array of text blocks", value)
    parts = []
    for index, block in enumerate(value):
        path = f"system.{index}"
        block = _object(path, block)
        if _kind(path, block, required=False) != "text":
            raise _invalid(f"{path}.type", "Input should be 'text'")
        parts.append(_text_part(path, block))
    return {"role": "system", "content": parts} if parts else None


def _stop_sequences(value) -> list[str]:
    if not isinstance(value, list):
        raise _wrong_type("stop_sequences", "an array of strings", value)
    if len(value) > MAX_STOP_SEQUENCES:
        raise _invalid("stop_sequences", f"{len(value)} items; this gateway takes at most {MAX_STOP_SEQUENCES}")
    return [_string(f"stop_sequences.{index}", item) for index, item in enumerate(value)]


def _user_id(value) -> str | None:
    metadata = _object("metadata", value)
    _extra_fields("metadata", metadata, frozenset({"user_id"}))
    user_id = metadata.get("user_id")
    if user_id is None:
        return None
    if len(_string("metadata.user_id", user_id)) > MAX_USER_ID_CHARS:
        raise _invalid("metadata.user_id", f"String should have at most {MAX_USER_ID_CHARS} characters")
    # It becomes the end customer's id (chat's `user`), which is stored and echoed back as sent.
    if not user_id.isprintable():
        raise _invalid("metadata.user_id", "String should have no control characters")
    return user_id or None


def _with_automatic_breakpoint(messages: list[dict], cache_control: dict) -> None:
    """Anthropic's automatic caching, as Anthropic applies it: the breakpoint on the last block of the request (the
    last message's last part; a string content becomes a text part to carry it), unless that block has its own."""
    last = messages[-1]
    if isinstance(last["content"], str):
        last["content"] = [{"type": "text", "text": last["content"]}]
    last["content"][-1].setdefault("cache_control", cache_control)


def _refuse_what_is_not_taken(body: dict) -> None:
    for name, value in body.items():
        if name in SUPPORTED_FIELDS:
            continue
        if name in UNSUPPORTED_FIELDS:
            if name in HARMLESS_VALUES and value == HARMLESS_VALUES[name]:
                continue
            raise _unsupported(name, UNSUPPORTED_FIELDS[name])
        takes = ", ".join(SUPPORTED_FIELDS)
        raise _invalid(_field_name(name), f"Extra inputs are not permitted (this gateway takes {takes})")


def chat_request_from_message(body, *, counting: bool = False) -> dict:
    """The chat completion request of a Messages API body; raises the 400 (a GatewayError) of the first thing wrong.

    ``counting``: for /v1/messages/count_tokens, which takes no ``max_tokens``.
    """
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    _refuse_what_is_not_taken(body)
    request: dict = {"model": _model(body.get("model"))}
    if not counting:
        if body.get("max_tokens") is None:
            raise _missing("max_tokens")
        _integer("max_tokens", body["max_tokens"], low=1, high=MAX_TOKENS_LIMIT)
        request[SET_FIELD] = body["max_tokens"]
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    if not messages:
        raise _invalid("messages", "at least one message is required", code="empty_array")
    chat_messages = [
        _message(f"messages.{index}", message, last=0 < index == len(messages) - 1)
        for index, message in enumerate(messages)
    ]
    system = _system(body["system"]) if body.get("system") is not None else None
    request["messages"] = [message for message in (system, *chat_messages) if message is not None]
    if body.get("temperature") is not None:
        _number("temperature", body["temperature"], low=0.0, high=1.0)
        request["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        _number("top_p", body["top_p"], low=0.0, high=1.0)
        request["top_p"] = body["top_p"]
    if body.get("top_k") is not None:
        _integer("top_k", body["top_k"], low=0, high=TOP_K_LIMIT)
        request["top_k"] = body["top_k"]
    if body.get("stop_sequences") is not None and (stop := _stop_sequences(body["stop_sequences"])):
        request["stop"] = stop
    if body.get("metadata") is not None and (user_id := _user_id(body["metadata"])):
        request["user"] = user_id
    if body.get("cache_control") is not None:
        _with_automatic_breakpoint(request["messages"], _cache_control("cache_control", body["cache_control"]))
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise _wrong_type("stream", "a boolean", body["stream"])
        if body["stream"] and not counting:
            # The usage chunk is always asked for: Anthropic's stream ends with the usage.
            request.update(stream=True, stream_options={"include_usage": True})
    return request
