"""A loopback server speaking Anthropic's Messages API, strict about what the real one refuses.

It echoes the last user text (cut at ``max_tokens`` words, then before the first of its ``stop_sequences`` found),
calls the first tool when tools are offered and no tool result came back yet, and imitates prompt caching as
Anthropic documents it: the prompt is read in the order tools, system, messages; each block marked with
``cache_control`` (at most four) ends a prefix that is cached only when it holds the model's minimum of tokens
(CACHED_MODELS, counted here at four characters a token; a model it does not list caches nothing). The longest such
prefix seen before (same model, same content, marks aside) is read from the cache, and the rest up to the last mark is
written to it. The model name
switches on failure modes: ``overloaded`` answers 529, ``stall`` waits STALL_SECONDS, ``stream-overloaded`` sends an
overloaded error as the first stream event, ``stream-break`` ends a stream before ``message_stop``,
``malformed-usage`` reports a negative output token count, ``no-usage`` reports no usage at all, ``malformed-content``
sends content that is not a list of blocks (streamed: an event that is a JSON array after the first words), and
``stop-<reason>`` ends the answer with that stop reason. ``failures`` queues (status, headers) answers to give before
the next normal ones; ``break_streams`` set ends every stream as ``stream-break`` does (for a model it caches for).
"""

import asyncio
import hashlib
import time
from collections import deque

import orjson

from tests.providers.asgi import end_stream, estimate_tokens, read_body, send_chunk, send_json, start_stream

STALL_SECONDS = 10
MAX_CACHE_MARKS = 4
# The models whose prompt it caches, with the fewest tokens a cached prefix holds: Anthropic's documented minimum
# cacheable prompt length, written out model by model rather than taken from the gateway's own table, which the tests
# hold to these.
CACHED_MODELS = {
    "claude-3-haiku-20240307": 2048,
    "claude-3-5-sonnet-20241022": 1024,
    "claude-3-5-haiku-20241022": 2048,
    "claude-sonnet-4-20250514": 1024,
    "claude-sonnet-4-6": 1024,
    "claude-haiku-4-5-20251001": 4096,
    "claude-opus-4-5-20251101": 4096,
}
BLOCK_TYPES = {"user": {"text", "image", "tool_result"}, "assistant": {"text", "tool_use"}}


class InvalidRequest(Exception):
    pass


def _block_text(block: dict) -> str:
    if block["type"] == "text":
        return block["text"]
    if block["type"] == "tool":
        return orjson.dumps({key: value for key, value in block.items() if key != "cache_control"}).decode()
    if block["type"] == "tool_result":
        return str(block["content"])
    if block["type"] == "tool_use":
        return orjson.dumps(block["input"]).decode()
    return "[image]"


def validate(body: dict) -> None:
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        raise InvalidRequest("max_tokens: Field required")
    messages = body.get("messages")
    if not messages:
        raise InvalidRequest("messages: at least one message is required")
    tool_use_ids: set[str] = set()
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise InvalidRequest(
                f"messages.{index}.role: roles must alternate starting with user, got {message['role']}"
            )
        for block in message["content"]:
            if block.get("type") not in BLOCK_TYPES[expected]:
                raise InvalidRequest(f"messages.{index}: block type {block.get('type')} not allowed for {expected}")
            if block["type"] == "text" and not block["text"].strip():
                raise InvalidRequest(f"messages.{index}: text content blocks must contain non-whitespace text")
            if block["type"] == "tool_use":
                tool_use_ids.add(block["id"])
            if block["type"] == "tool_result" and block["tool_use_id"] not in tool_use_ids:
                raise InvalidRequest(f"messages.{index}: tool_result for unknown tool_use_id {block['tool_use_id']}")
            if block["type"] == "image" and block["source"]["type"] not in ("base64", "url"):
                raise InvalidRequest(f"messages.{index}: unknown image source")
    system = body.get("system", [])
    if not isinstance(system, str) and any(block.get("type") != "text" for block in system):
        raise InvalidRequest("system: only text blocks")
    if not isinstance(system, str) and any(not block["text"].strip() for block in system):
        raise InvalidRequest("system: text content blocks must contain non-whitespace text")
    marks = sum(1 for block in _prompt_blocks(body) if block.get("cache_control"))
    if marks > MAX_CACHE_MARKS:
        raise InvalidRequest(f"A maximum of {MAX_CACHE_MARKS} blocks with cache_control may be provided, not {marks}.")


def _prompt_blocks(body: dict) -> list[dict]:
    """The prompt in the order Anthropic caches it: tools, system blocks, then every message's blocks."""
    system = body.get("system") or []
    system_blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
    tools = [{"type": "tool", **tool} for tool in body.get("tools") or []]
    return tools + system_blocks + [block for message in body["messages"] for block in message["content"]]


class AnthropicServer:
    def __init__(self, *, api_key: str = "sk-ant-test"):
        self.api_key = api_key
        self.requests: list[dict] = []
        self.arrivals: list[float] = []
        self.failures: deque[tuple[int, dict[str, str]]] = deque()
        self.cached_prefixes: set[str] = set()
        self.break_streams = False

    async def __call__(self, scope, receive, send):
        headers = dict(scope["headers"])
        if scope["path"] != "/v1/messages" or scope["method"] != "POST":
            await self._error(send, 404, "not_found_error", f"Unknown path {scope['path']}")
            return
        if headers.get(b"x-api-key") != self.api_key.encode():
            await self._error(send, 401, "authentication_error", "invalid x-api-key")
            return
        if not headers.get(b"anthropic-version"):
            await self._error(send, 400, "invalid_request_error", "anthropic-version header is required")
            return
        body = orjson.loads(await read_body(receive))
        self.requests.append(body)
        self.arrivals.append(time.monotonic())
        if self.failures:
            status, extra_headers = self.failures.popleft()
            await self._error(
                send, status, "rate_limit_error" if status == 429 else "api_error", "scripted", extra_headers
            )
            return
        try:
            validate(body)
        except InvalidRequest as exc:
            await self._error(send, 400, "invalid_request_error", str(exc))
            return
        model = body["model"]
        if "stream-overloaded" not in model and "overloaded" in model:
            await self._error(send, 529, "overloaded_error", "Overloaded")
            return
        if "stall" in model:
            await asyncio.sleep(STALL_SECONDS)
        message = self._message(body)
        if "malformed-usage" in model:
            message["usage"]["output_tokens"] = -3
        if "no-usage" in model:
            del message["usage"]
        if "malformed-content" in model and not body.get("stream"):
            message["content"] = "not a list of blocks"
        if "stop-" in model:
            message["stop_reason"] = model.rsplit("stop-", 1)[1]
        if body.get("stream"):
            await self._stream(send, message, model, cut="stream-break" in model or self.break_streams)
        else:
            await send_json(send, 200, message)

    def _usage(self, body: dict) -> dict:
        blocks = _prompt_blocks(body)

        def tokens(upto: int) -> int:
            return estimate_tokens("".join(_block_text(block) for block in blocks[:upto]))

        def key(upto: int) -> str:
            unmarked = [{k: v for k, v in block.items() if k != "cache_control"} for block in blocks[:upto]]
            return hashlib.sha256(orjson.dumps([body["model"], unmarked])).hexdigest()

        minimum = CACHED_MODELS.get(body["model"])
        ends = [index + 1 for index, block in enumerate(blocks) if block.get("cache_control")]
        cacheable = [end for end in ends if minimum is not None and tokens(end) >= minimum]
        read_end = max((end for end in cacheable if key(end) in self.cached_prefixes), default=0)
        cache_read = tokens(read_end) if read_end else 0
        cache_write = tokens(cacheable[-1]) - cache_read if cacheable else 0
        self.cached_prefixes.update(key(end) for end in cacheable)
        return {
            "input_tokens": tokens(len(blocks)) - cache_read - cache_write,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
        }

    def _message(self, body: dict) -> dict:
        last = body["messages"][-1]["content"]
        answered_tool = any(block["type"] == "tool_result" for block in last)
        stop_sequence = None
        if body.get("tools") and not answered_tool and (body.get("tool_choice") or {}).get("type") != "none":
            tool = body["tools"][0]
            arguments = {name: "Paris" for name in tool["input_schema"].get("required", [])}
            content = [{"type": "tool_use", "id": "toolu_01", "name": tool["name"], "input": arguments}]
            stop_reason, output_tokens = "tool_use", 12
        else:
            words = ("Echo: " + " ".join(_block_text(block) for block in last)).split(" ")
            stop_reason = "end_turn"
            if len(words) > body["max_tokens"]:
                words, stop_reason = words[: body["max_tokens"]], "max_tokens"
            text = " ".join(words)
            found = [(text.find(stop), stop) for stop in body.get("stop_sequences") or () if stop in text]
            if found:
                at, stop_sequence = min(found)
                text, stop_reason = text[:at], "stop_sequence"
            content = [{"type": "text", "text": text}]
            output_tokens = len(text.split(" "))
        return {
            "id": "msg_test01",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {**self._usage(body), "output_tokens": output_tokens},
        }

    @staticmethod
    async def _stream(send, message: dict, model: str, *, cut: bool) -> None:
        await start_stream(send, b"text/event-stream")

        async def event(kind: str, payload: dict) -> None:
            await send_chunk(
                send, f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **payload}) + b"\n\n"
            )

        if "stream-overloaded" in model:
            await event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
            await end_stream(send)
            return
        usage = message.get("usage")
        started = {**message, "content": [], "stop_reason": None}
        if usage is not None:
            started["usage"] = {**usage, "output_tokens": 1}
        await event("message_start", {"message": started})
        await event("ping", {})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                await event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                for i, word in enumerate(block["text"].split(" ")):
                    delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
                    await event("content_block_delta", {"index": index, "delta": delta})
                    if "malformed-content" in model and i == 1:
                        await send_chunk(send, b"event: content_block_delta\ndata: [1, 2]\n\n")
                    if cut and i == 1:
                        await end_stream(send)
                        return
            else:
                await event("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
                arguments = orjson.dumps(block["input"]).decode()
                for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    await event("content_block_delta", {"index": index, "delta": delta})
            await event("content_block_stop", {"index": index})
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
        usage_delta = {"usage": {"output_tokens": usage["output_tokens"]}} if usage is not None else {}
        await event("message_delta", {"delta": delta, **usage_delta})
        await event("message_stop", {})
        await end_stream(send)

    @staticmethod
    async def _error(send, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        payload = {"type": "error", "error": {"type": error_type, "message": message}}
        await send_json(send, status, payload, headers)
