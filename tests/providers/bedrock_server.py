"""A loopback server speaking Bedrock's Converse and ConverseStream as boto3 calls them (``endpoint_url``).

ConverseStream answers in AWS's binary event-stream framing, encoded here by hand so boto3's own
parser (CRC checks included) reads it. The server echoes the last user text, calls the first tool
when tools are offered and no result came back yet, and checks what the real API refuses. It imitates
prompt caching: the prompt is read in the order tools, system, messages, and each ``cachePoint`` block
(at most four) ends a prefix that is cached only when it holds the model's minimum of tokens (CACHE_POINT_MODELS,
counted here at four characters a token); the longest such prefix seen before (same model, same content) is read
from the cache and the rest up to the last cache point written to it. A model it does not list answers a
``cachePoint`` with a 400 ValidationException, as Bedrock answers one on a model without prompt caching. The
model id switches on failure modes: ``throttle`` answers 429 ThrottlingException, ``unavailable``
503, ``stall`` waits STALL_SECONDS, ``stream-exception`` sends an exception as the first stream event,
``stream-midfail`` one after the first words; ``malformed-usage`` reports a negative output token count, ``no-usage``
no usage at all; ``stop-<reason>`` ends the answer with that stop reason.
"""

import asyncio
import base64
import binascii
import hashlib
import struct

import orjson

from tests.providers.asgi import end_stream, estimate_tokens, read_body, send_chunk, send_json, start_stream

STALL_SECONDS = 10
MAX_CACHE_POINTS = 4
# The model ids that take a cachePoint, with the fewest tokens a cached prefix holds, written out model by model from
# AWS's and Anthropic's documentation rather than taken from the gateway's own table, which the tests hold to these.
CACHE_POINT_MODELS = {
    "anthropic.claude-3-7-sonnet-20250219-v1:0": 1024,
    "us.anthropic.claude-3-7-sonnet-20250219-v1:0": 1024,
    "anthropic.claude-3-5-haiku-20241022-v1:0": 2048,
    "anthropic.claude-sonnet-4-20250514-v1:0": 1024,
    "eu.anthropic.claude-sonnet-4-5-20250929-v1:0": 1024,
    "anthropic.claude-opus-4-1-20250805-v1:0": 1024,
    "anthropic.claude-haiku-4-5-20251001-v1:0": 4096,
    "global.anthropic.claude-opus-4-5-20251101-v1:0": 4096,
}
UNSUPPORTED_CACHE_POINT = (
    "You invoked an unsupported model or your request did not allow prompt caching. See the documentation for more "
    "information."
)
STRING_HEADER_TYPE = 7
BLOCK_KEYS = {"user": {"text", "image", "toolResult", "cachePoint"}, "assistant": {"text", "toolUse", "cachePoint"}}


def event_stream_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of the AWS event-stream encoding: prelude (lengths + CRC), headers, payload, message CRC."""
    encoded_headers = b"".join(
        bytes([len(name)])
        + name.encode()
        + bytes([STRING_HEADER_TYPE])
        + struct.pack(">H", len(value))
        + value.encode()
        for name, value in headers.items()
    )
    total_length = 4 + 4 + 4 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total_length, len(encoded_headers))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded_headers + payload
    return message + struct.pack(">I", binascii.crc32(message))


def stream_event(event_type: str, payload: dict) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return event_stream_message(headers, orjson.dumps(payload))


def stream_exception(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return event_stream_message(headers, orjson.dumps({"message": message}))


class InvalidRequest(Exception):
    pass


def _block_text(block: dict) -> str:
    if "text" in block:
        return block["text"]
    if "toolSpec" in block:
        return orjson.dumps(block["toolSpec"]).decode()
    if "cachePoint" in block:
        return ""
    if "toolResult" in block:
        return " ".join(part.get("text", "") for part in block["toolResult"]["content"])
    if "toolUse" in block:
        return orjson.dumps(block["toolUse"]["input"]).decode()
    return "[image]"


def validate(body: dict) -> None:
    messages = body.get("messages")
    if not messages:
        raise InvalidRequest("messages must not be empty")
    tool_use_ids: set[str] = set()
    uses_tools = False
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise InvalidRequest(f"messages.{index}: roles must alternate starting with user")
        if not message["content"]:
            raise InvalidRequest(f"messages.{index}: content must not be empty")
        for block in message["content"]:
            (key,) = block.keys()
            if key not in BLOCK_KEYS[expected]:
                raise InvalidRequest(f"messages.{index}: {key} not allowed for {expected}")
            if key == "text" and not block["text"].strip():
                raise InvalidRequest(f"messages.{index}: text content blocks must be non-empty")
            if key == "image":
                if block["image"]["format"] not in ("png", "jpeg", "gif", "webp"):
                    raise InvalidRequest(f"messages.{index}: unknown image format")
                base64.b64decode(block["image"]["source"]["bytes"], validate=True)
            if key == "toolUse":
                uses_tools = True
                tool_use_ids.add(block["toolUse"]["toolUseId"])
            if key == "toolResult":
                uses_tools = True
                if block["toolResult"]["toolUseId"] not in tool_use_ids:
                    raise InvalidRequest(f"messages.{index}: toolResult for an unknown toolUseId")
    if uses_tools and not body.get("toolConfig"):
        raise InvalidRequest("toolConfig field must be defined when using toolUse and toolResult content blocks")
    for block in body.get("system") or []:
        if set(block) - {"text", "cachePoint"} or len(block) != 1:
            raise InvalidRequest(f"system: unknown block {sorted(block)}")
        if "text" in block and not block["text"].strip():
            raise InvalidRequest("system: text content blocks must be non-empty")
    for tool in (body.get("toolConfig") or {}).get("tools") or []:
        if set(tool) - {"toolSpec", "cachePoint"} or len(tool) != 1:
            raise InvalidRequest(f"toolConfig.tools: unknown entry {sorted(tool)}")
    for block in _prompt_blocks(body):
        if "cachePoint" in block and block["cachePoint"].get("type") != "default":
            raise InvalidRequest("cachePoint.type must be default")
    points = sum(1 for block in _prompt_blocks(body) if "cachePoint" in block)
    if points > MAX_CACHE_POINTS:
        raise InvalidRequest(f"at most {MAX_CACHE_POINTS} cache points may be provided, not {points}")


def _prompt_blocks(body: dict) -> list[dict]:
    """The prompt in the order Bedrock caches it: tools, system blocks, then every message's blocks."""
    tools = (body.get("toolConfig") or {}).get("tools") or []
    messages = [block for message in body["messages"] for block in message["content"]]
    return [*tools, *(body.get("system") or []), *messages]


class BedrockServer:
    def __init__(self):
        self.requests: list[dict] = []
        self.authorizations: list[str] = []
        self.cached_prefixes: set[str] = set()

    async def __call__(self, scope, receive, send):
        parts = scope["path"].strip("/").split("/")
        if scope["method"] != "POST" or len(parts) != 3 or parts[0] != "model":
            await self._error(send, 404, "ResourceNotFoundException", f"Unknown path {scope['path']}")
            return
        model_id, operation = parts[1], parts[2]
        self.authorizations.append(dict(scope["headers"]).get(b"authorization", b"").decode())
        body = orjson.loads(await read_body(receive))
        self.requests.append({"modelId": model_id, **body})
        try:
            validate(body)
            if model_id not in CACHE_POINT_MODELS and any("cachePoint" in block for block in _prompt_blocks(body)):
                raise InvalidRequest(UNSUPPORTED_CACHE_POINT)
        except (InvalidRequest, binascii.Error) as exc:
            await self._error(send, 400, "ValidationException", str(exc))
            return
        if "throttle" in model_id:
            await self._error(send, 429, "ThrottlingException", "Too many requests, please wait before trying again.")
            return
        if "unavailable" in model_id:
            await self._error(send, 503, "ServiceUnavailableException", "Service unavailable")
            return
        if "stall" in model_id:
            await asyncio.sleep(STALL_SECONDS)
        answer = self._answer(body, model_id)
        if operation == "converse-stream":
            await self._stream(send, answer, model_id)
        else:
            await send_json(send, 200, answer, {"x-amzn-requestid": "req-test-1"})

    def _usage(self, body: dict, model_id: str) -> dict:
        blocks = _prompt_blocks(body)

        def tokens(upto: int) -> int:
            return estimate_tokens("".join(_block_text(block) for block in blocks[:upto]))

        def key(upto: int) -> str:
            content = [block for block in blocks[:upto] if "cachePoint" not in block]
            return hashlib.sha256(orjson.dumps([model_id, content])).hexdigest()

        minimum = CACHE_POINT_MODELS.get(model_id, 0)
        points = [index for index, block in enumerate(blocks) if "cachePoint" in block]
        cacheable = [point for point in points if tokens(point) >= minimum]
        read_end = max((point for point in cacheable if key(point) in self.cached_prefixes), default=0)
        cache_read = tokens(read_end) if read_end else 0
        cache_write = tokens(cacheable[-1]) - cache_read if cacheable else 0
        self.cached_prefixes.update(key(point) for point in cacheable)
        usage = {"inputTokens": tokens(len(blocks)) - cache_read - cache_write}
        if points:
            usage.update(cacheReadInputTokens=cache_read, cacheWriteInputTokens=cache_write)
        return usage

    def _answer(self, body: dict, model_id: str) -> dict:
        last = body["messages"][-1]["content"]
        answered_tool = any("toolResult" in block for block in last)
        tools = (body.get("toolConfig") or {}).get("tools") or []
        if tools and not answered_tool:
            spec = tools[0]["toolSpec"]
            arguments = {name: "Paris" for name in spec["inputSchema"]["json"].get("required", [])}
            content = [{"toolUse": {"toolUseId": "tooluse_01", "name": spec["name"], "input": arguments}}]
            stop_reason, output_tokens = "tool_use", 10
        else:
            words = ("Echo: " + " ".join(_block_text(block) for block in last)).split(" ")
            max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens") or 4096
            stop_reason = "end_turn"
            if len(words) > max_tokens:
                words, stop_reason = words[:max_tokens], "max_tokens"
            content = [{"text": " ".join(words)}]
            output_tokens = len(words)
        usage = {**self._usage(body, model_id), "outputTokens": output_tokens}
        if "malformed-usage" in model_id:
            usage["outputTokens"] = -3
        usage["totalTokens"] = sum(usage.values())
        if "stop-" in model_id:
            stop_reason = model_id.rsplit("stop-", 1)[1]
        answer = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason,
            "usage": usage,
            "metrics": {"latencyMs": 5},
        }
        if "no-usage" in model_id:
            del answer["usage"]
        return answer

    @staticmethod
    async def _stream(send, answer: dict, model_id: str) -> None:
        await start_stream(send, b"application/vnd.amazon.eventstream")
        if "stream-exception" in model_id:
            await send_chunk(send, stream_exception("serviceUnavailableException", "Bedrock is unavailable"))
            await end_stream(send)
            return
        await send_chunk(send, stream_event("messageStart", {"role": "assistant"}))
        for index, block in enumerate(answer["output"]["message"]["content"]):
            if "text" in block:
                for i, word in enumerate(block["text"].split(" ")):
                    delta = {"delta": {"text": word if i == 0 else " " + word}, "contentBlockIndex": index}
                    await send_chunk(send, stream_event("contentBlockDelta", delta))
                    if "stream-midfail" in model_id and i == 1:
                        await send_chunk(send, stream_exception("modelStreamErrorException", "model failed"))
                        await end_stream(send)
                        return
            else:
                tool_use = block["toolUse"]
                start = {"toolUse": {"toolUseId": tool_use["toolUseId"], "name": tool_use["name"]}}
                await send_chunk(send, stream_event("contentBlockStart", {"start": start, "contentBlockIndex": index}))
                arguments = orjson.dumps(tool_use["input"]).decode()
                for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                    delta = {"delta": {"toolUse": {"input": piece}}, "contentBlockIndex": index}
                    await send_chunk(send, stream_event("contentBlockDelta", delta))
            await send_chunk(send, stream_event("contentBlockStop", {"contentBlockIndex": index}))
        await send_chunk(send, stream_event("messageStop", {"stopReason": answer["stopReason"]}))
        metadata = {name: answer[name] for name in ("usage", "metrics") if name in answer}
        await send_chunk(send, stream_event("metadata", metadata))
        await end_stream(send)

    @staticmethod
    async def _error(send, status: int, error_type: str, message: str) -> None:
        await send_json(send, status, {"message": message}, {"x-amzn-errortype": f"{error_type}:http://internal/"})
