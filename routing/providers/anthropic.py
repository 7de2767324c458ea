"""Anthropic's Messages API behind OpenAI's chat completion format, both ways.

``base_url`` is the API root with its version, e.g. ``https://api.anthropic.com/v1``; requests go to
``{base_url}/messages``. Anthropic requires ``max_tokens``: when the client sent none, DEFAULT_MAX_TOKENS applies.
"""

import time
from collections.abc import AsyncIterator

import httpx
import orjson

from routing.catalog import ProviderEntry
from routing.max_tokens import requested_max_tokens
from routing.providers import prompt_cache
from routing.providers.base import (
    SSE_DONE,
    ChunkBuilder,
    MalformedAnswer,
    UpstreamError,
    UpstreamRejected,
    UpstreamReply,
    UsageFields,
    carried_parts,
    chat_completion_reply,
    completion_id,
    conversation,
    elapsed_ms_since,
    invalid_response,
    json_post,
    message_text,
    openai_tool_call,
    parse_data_url,
    refuse_untranslated,
    send_or_reject,
    sse_events,
    stop_sequences,
    stream_opened,
    tool_call_arguments,
    translated_events,
    translated_reply,
    wants_usage_chunk,
)

API = "Anthropic's Messages API"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
# A prompt-cache breakpoint of the default, 5-minute cache.
EPHEMERAL = {"type": "ephemeral"}
# Anthropic answers 529 when overloaded; it is a server-side failure like any 5xx.
OVERLOADED_STATUS = 529

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # The context window filled up before the answer ended: cut short, as at max_tokens.
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason) -> str | None:
    """The chat finish reason of Anthropic's stop reason. One the table does not know (added since) is passed on as it
    came, as an OpenAI-compatible upstream's own is: the cache takes no such answer for a whole one."""
    return FINISH_REASONS.get(stop_reason, stop_reason)


def _content_blocks(content) -> list[dict]:
    """Text, refusal and image parts as Anthropic blocks (a blank text is none: Anthropic refuses it); a part's
    ``cache_control`` marks a prompt-cache breakpoint. A part of another type raises UntranslatedPart."""
    if isinstance(content, str):
        return [] if prompt_cache.blank(content) else [{"type": "text", "text": content}]
    blocks = []
    for part in carried_parts(content or []):
        if (text := prompt_cache.part_text(part)) is not None:
            blocks.append({"type": "text", "text": text})
        else:
            url = part["image_url"]["url"]
            inline = parse_data_url(url)
            source = (
                {"type": "base64", "media_type": inline[0], "data": inline[1]}
                if inline
                else {"type": "url", "url": url}
            )
            blocks.append({"type": "image", "source": source})
        if part.get("cache_control") is not None:
            blocks[-1]["cache_control"] = part["cache_control"]
    return blocks


def _tool_use_block(tool_call: dict) -> dict:
    name = tool_call["function"]["name"]
    return {"type": "tool_use", "id": tool_call["id"], "name": name, "input": tool_call_arguments(tool_call)}


def _tool_result_block(message: dict) -> dict:
    content = message.get("content")
    block = {"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": message_text(content)}
    parts = content if isinstance(content, list) else []
    if marks := [part["cache_control"] for part in parts if part.get("cache_control") is not None]:
        block["cache_control"] = marks[-1]
    return block


def _messages(body: dict) -> tuple[list[dict], list[dict]]:
    """System blocks (text only) and Anthropic messages."""
    return conversation(
        body,
        api=API,
        system_blocks=lambda content: [block for block in _content_blocks(content) if block["type"] == "text"],
        content_blocks=_content_blocks,
        tool_use_block=_tool_use_block,
        tool_result_blocks=lambda message: [_tool_result_block(message)],
    )


def _tool_choice(choice, parallel_tool_calls) -> dict | None:
    if choice is None:
        translated = {"type": "auto"} if parallel_tool_calls is False else None
    elif choice == "auto":
        translated = {"type": "auto"}
    elif choice == "required":
        translated = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    else:
        translated = {"type": "tool", "name": choice["function"]["name"]}
    if translated is not None and parallel_tool_calls is False:
        translated["disable_parallel_tool_use"] = True
    return translated


def _tool(tool: dict) -> dict:
    """An OpenAI tool as Anthropic's; its ``cache_control`` (LiteLLM's place for it) marks a prompt-cache breakpoint."""
    translated = {
        "name": tool["function"]["name"],
        "description": tool["function"].get("description", ""),
        "input_schema": tool["function"].get("parameters") or {"type": "object", "properties": {}},
    }
    if tool.get("cache_control") is not None:
        translated["cache_control"] = tool["cache_control"]
    return translated


def _with_checkpoints(request: dict, checkpoints: prompt_cache.Checkpoints) -> dict:
    """The request with ``cache_control`` on the last block of each part of its prefix the gateway marks."""
    last_blocks = (
        (checkpoints.tools, request.get("tools") or []),
        (checkpoints.system, request.get("system") or []),
        (checkpoints.history, request["messages"][-2]["content"] if len(request["messages"]) > 1 else []),
    )
    for marked, blocks in last_blocks:
        if marked and blocks:
            blocks[-1]["cache_control"] = dict(EPHEMERAL)
    return request


def messages_request(body: dict, *, checkpoints: prompt_cache.Checkpoints = prompt_cache.NO_CHECKPOINTS) -> dict:
    """OpenAI chat completion request → Anthropic Messages request, with the gateway's prompt-cache ``checkpoints``
    (``prompt_cache.gateway_checkpoints``). The client's own ``cache_control`` is checked first: what Anthropic would
    refuse or bill beyond the catalog's prices raises CacheControlRefused (``prompt_cache.client_marks``); a field or a
    message this translation would drop although it changes the answer or its cost raises RequestRefused."""
    refuse_untranslated(API, body)
    prompt_cache.client_marks(body)
    system, messages = _messages(body)
    request = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": requested_max_tokens(body) or DEFAULT_MAX_TOKENS,
    }
    if system:
        request["system"] = system
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            request[name] = body[name]
    if (top_k := body.get("top_k")) is not None and top_k >= 0:
        # -1 is vLLM's "no cut", which is what leaving it out means to Anthropic.
        request["top_k"] = top_k
    if stop := stop_sequences(body):
        request["stop_sequences"] = stop
    if body.get("tools"):
        request["tools"] = [_tool(tool) for tool in body["tools"]]
        if choice := _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")):
            request["tool_choice"] = choice
    if body.get("user"):
        request["metadata"] = {"user_id": str(body["user"])}
    if body.get("stream"):
        request["stream"] = True
    return _with_checkpoints(request, checkpoints)


USAGE_FIELDS = UsageFields("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


def _stop_sequence(value) -> str | None:
    """The message's ``stop_sequence``: which of the request's stop sequences ended it (null when none did)."""
    return value if isinstance(value, str) else None


def chat_completion_body(message: dict, *, model: str) -> dict:
    """Anthropic message → OpenAI chat.completion body."""
    blocks = message.get("content") or []
    return chat_completion_reply(
        reply_id=message.get("id", ""),
        model=message.get("model") or model,
        text="".join(block["text"] for block in blocks if block["type"] == "text"),
        tool_calls=[
            openai_tool_call(call_id=block["id"], name=block["name"], arguments=block["input"])
            for block in blocks
            if block["type"] == "tool_use"
        ],
        finish_reason=finish_reason(message.get("stop_reason")),
        usage=USAGE_FIELDS.reported_usage(message.get("usage")),
    )


async def _request(provider: ProviderEntry, body: dict, provider_cache: str) -> httpx.Request:
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if provider.api_key:
        headers["x-api-key"] = provider.api_key
    checkpoints = await prompt_cache.gateway_checkpoints(body, kind="anthropic", provider_cache=provider_cache)
    return json_post(provider, "/messages", messages_request(body, checkpoints=checkpoints), headers=headers)


async def chat_completion(
    provider: ProviderEntry, body: dict, *, provider_cache: str = prompt_cache.OFF
) -> UpstreamReply:
    started = time.perf_counter()
    request = await _request(provider, {**body, "stream": False}, provider_cache)
    response = await send_or_reject(provider, request, stream=False, started=started)
    try:
        message = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        problem = MalformedAnswer("the body is not JSON")
        raise invalid_response(provider, problem, elapsed_ms=elapsed_ms_since(started)) from exc
    reply = translated_reply(
        provider, lambda: chat_completion_body(message, model=body["model"]), what="a body", started=started
    )
    reply.stop_sequence = _stop_sequence(message.get("stop_sequence"))
    return reply


class ChunkTranslator(ChunkBuilder):
    """Anthropic stream events → OpenAI chat.completion.chunk payloads, keeping the usage seen so far."""

    def __init__(self, *, model: str, include_usage: bool):
        super().__init__(model=model, include_usage=include_usage)
        self.usage_so_far: dict = {}
        self.finished = False
        self.stop_sequence: str | None = None

    def translate(self, event: dict) -> list[dict]:
        kind = event.get("type")
        if kind == "message_start":
            message = event["message"]
            self.base["id"] = completion_id(message.get("id", ""))
            self.base["model"] = message.get("model") or self.base["model"]
            self.usage_so_far.update(message.get("usage") or {})
            return [self.delta({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event["content_block"]
            if block["type"] == "tool_use":
                return [self.tool_call_start(block_index=event["index"], call_id=block["id"], name=block["name"])]
            if block["type"] == "text" and block.get("text"):
                return [self.delta({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "text_delta":
                return [self.delta({"content": delta["text"]})]
            if delta["type"] == "input_json_delta":
                return self.tool_call_arguments(block_index=event["index"], partial_json=delta["partial_json"])
            return []
        if kind == "message_delta":
            self.usage_so_far.update({key: value for key, value in (event.get("usage") or {}).items() if value})
            delta = event.get("delta") or {}
            if not delta.get("stop_reason"):
                return []
            self.stop_sequence = _stop_sequence(delta.get("stop_sequence"))
            return [self.delta({}, finish_reason(delta["stop_reason"]))]
        if kind == "message_stop":
            self.finished = True
            # A stream that reported no usage has no usage chunk: the gateway counts it, rather than charge nothing.
            reported = self.include_usage and self.usage_so_far
            return [self.usage(USAGE_FIELDS.openai_usage_of(self.usage_so_far))] if reported else []
        return []


def _stream_error(provider: ProviderEntry, event: dict, elapsed_ms: int) -> UpstreamError:
    error = event.get("error") if isinstance(event.get("error"), dict) else {}
    status = OVERLOADED_STATUS if error.get("type") == "overloaded_error" else 500
    return UpstreamRejected(
        f"provider {provider.name} failed mid-stream: {error.get('message', 'unknown error')}",
        upstream_status=status,
        error_body=event,
        elapsed_ms=elapsed_ms,
    )


class AnthropicStream:
    """Anthropic's SSE stream re-emitted as OpenAI chunks. The first event is read on open, so a provider
    that fails before sending anything fails the open (where a fallback can still take over)."""

    def __init__(self, provider: ProviderEntry, response: httpx.Response, started: float, body: dict):
        self.provider = provider
        self.response = response
        self.started = started
        self.translator = ChunkTranslator(model=body["model"], include_usage=wants_usage_chunk(body))
        self._source = self._anthropic_events()
        self._first: dict | None = None

    async def open(self) -> None:
        self._first = await anext(self._source, None)
        if self._first is not None and self._first.get("type") == "error":
            raise _stream_error(self.provider, self._first, self.elapsed_ms())

    async def _anthropic_events(self) -> AsyncIterator[dict]:
        try:
            async for event in sse_events(self.provider, self.response, self.started):
                if event.data:
                    yield self._event(event.data)
        except orjson.JSONDecodeError as exc:
            problem = MalformedAnswer("a stream event that is not JSON")
            raise invalid_response(self.provider, problem, elapsed_ms=self.elapsed_ms()) from exc

    def _event(self, data: str) -> dict:
        event = orjson.loads(data)
        if not isinstance(event, dict):
            problem = MalformedAnswer("a stream event that is not a JSON object")
            raise invalid_response(self.provider, problem, elapsed_ms=self.elapsed_ms())
        return event

    async def events(self) -> AsyncIterator[str]:
        pending = [self._first] if self._first is not None else []
        self._first = None
        while True:
            event = pending.pop() if pending else await anext(self._source, None)
            if event is None:
                return
            if event.get("type") == "error":
                raise _stream_error(self.provider, event, self.elapsed_ms())
            for sse in translated_events(self.provider, self.translator.translate, event, elapsed_ms=self.elapsed_ms()):
                yield sse
            if self.translator.finished:
                yield SSE_DONE
                return

    @property
    def stop_sequence(self) -> str | None:
        return self.translator.stop_sequence

    def partial_usage(self) -> dict | None:
        """What Anthropic reported of the usage so far (message_start's input, cache reads and writes, and any
        message_delta's), in OpenAI's shape; None when it reported none. For a stream cut before message_stop, whose
        prompt is then charged as reported rather than counted (StreamRelay._settled_usage). Raises MalformedAnswer
        for counts that are not counts."""
        usage = self.translator.usage_so_far
        return USAGE_FIELDS.openai_usage_of(usage) if usage else None

    def elapsed_ms(self) -> int:
        return elapsed_ms_since(self.started)

    async def aclose(self) -> None:
        await self._source.aclose()
        await self.response.aclose()


async def open_chat_stream(
    provider: ProviderEntry, body: dict, *, provider_cache: str = prompt_cache.OFF
) -> AnthropicStream:
    started = time.perf_counter()
    request = await _request(provider, {**body, "stream": True}, provider_cache)
    response = await send_or_reject(provider, request, stream=True, started=started)
    return await stream_opened(AnthropicStream(provider, response, started, body))
