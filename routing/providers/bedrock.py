"""AWS Bedrock's Converse API (through boto3) behind OpenAI's chat completion format, both ways.

boto3 blocks, so every call runs on a bounded thread pool and never on the event loop; a
ConverseStream is read by one pool thread and handed to the loop through an asyncio queue.
The credential is ``ACCESS_KEY_ID:SECRET_ACCESS_KEY`` (optionally ``:SESSION_TOKEN``); empty uses
boto3's default chain. ``base_url``, when set, is the endpoint URL (a VPC endpoint, or a test server).
"""

import asyncio
import base64
import binascii
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)

from routing.catalog import ProviderEntry
from routing.max_tokens import requested_max_tokens
from routing.providers import prompt_cache
from routing.providers.base import (
    SSE_DONE,
    ChunkBuilder,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamRejected,
    UpstreamReply,
    UpstreamTimeout,
    UsageFields,
    carried_parts,
    chat_completion_reply,
    conversation,
    elapsed_ms_since,
    message_text,
    openai_tool_call,
    parse_data_url,
    parse_retry_after,
    refuse_untranslated,
    stop_sequences,
    stream_opened,
    tool_call_arguments,
    translated_events,
    translated_reply,
    unsupported_by,
    wants_usage_chunk,
)

API = "Bedrock's Converse API"
# Threads (and pooled connections) for Bedrock calls; a stream holds one for its whole length.
MAX_CONCURRENT_CALLS = 64
IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # The context window filled up before the answer ended: cut short, as at max_tokens.
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# In the id of every Claude model on Bedrock (``anthropic.claude-…``, ``us.anthropic.claude-…``).
CLAUDE = "claude"
# Error codes of Bedrock, for the event-stream exceptions that carry no HTTP status.
STATUS_BY_ERROR_CODE = {
    "ThrottlingException": 429,
    "ServiceUnavailableException": 503,
    "ModelNotReadyException": 503,
    "InternalServerException": 500,
    "ModelStreamErrorException": 500,
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
}

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_CALLS, thread_name_prefix="bedrock")
    return _executor


@lru_cache(maxsize=32)
def _client(region: str, endpoint_url: str, credential: str, timeout_seconds: float):
    """A bedrock-runtime client per configuration; boto3 clients are thread-safe once built.

    botocore's own retries are off: retries and fallbacks are decided in routing.resilience.
    """
    access_key_id, _, rest = credential.partition(":")
    secret_access_key, _, session_token = rest.partition(":")
    session = boto3.session.Session(
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        aws_session_token=session_token or None,
        region_name=region or None,
    )
    config = Config(
        connect_timeout=min(timeout_seconds, 5.0),
        read_timeout=timeout_seconds,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=MAX_CONCURRENT_CALLS,
    )
    return session.client("bedrock-runtime", endpoint_url=endpoint_url or None, config=config)


def _client_for(provider: ProviderEntry):
    return _client(provider.region, provider.base_url, provider.api_key, provider.timeout_seconds)


class UnsupportedForBedrock(UpstreamRejected):
    """The request uses something Converse cannot take; refused before any call, like a 400 from AWS."""

    def __init__(self, message: str):
        super().__init__(message, upstream_status=400, error_body=None, elapsed_ms=0)


def _image_block(url: str) -> dict:
    inline = parse_data_url(url)
    if inline is None:
        raise UnsupportedForBedrock("Bedrock takes images only inline, as base64 data: URLs")
    media_type, data = inline
    if media_type not in IMAGE_FORMATS:
        raise UnsupportedForBedrock(f"Bedrock cannot take images of type {media_type}")
    try:
        image_bytes = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise UnsupportedForBedrock("an image data: URL is not valid base64") from exc
    return {"image": {"format": IMAGE_FORMATS[media_type], "source": {"bytes": image_bytes}}}


def _content_blocks(content) -> list[dict]:
    """Text, refusal and image parts as Converse blocks (a blank text is none: Converse refuses it); a part's
    ``cache_control`` becomes a cache point after its block. A part of another type raises UntranslatedPart."""
    if isinstance(content, str):
        return [] if prompt_cache.blank(content) else [{"text": content}]
    blocks = []
    for part in carried_parts(content or []):
        if (text := prompt_cache.part_text(part)) is not None:
            blocks.append({"text": text})
        else:
            blocks.append(_image_block(part["image_url"]["url"]))
        if part.get("cache_control") is not None:
            blocks.append(cache_point())
    return blocks


def cache_point() -> dict:
    """Converse's prompt-cache checkpoint: the blocks before it are the prefix cached (the default, 5-minute cache)."""
    return {"cachePoint": {"type": "default"}}


def _tool_use_block(tool_call: dict) -> dict:
    tool_use = {"toolUseId": tool_call["id"], "name": tool_call["function"]["name"]}
    return {"toolUse": {**tool_use, "input": tool_call_arguments(tool_call)}}


def _tool_result_block(message: dict) -> dict:
    result = {"toolUseId": message["tool_call_id"], "content": [{"text": message_text(message.get("content"))}]}
    return {"toolResult": result}


def _tool_result_blocks(message: dict) -> list[dict]:
    """The tool's result, followed by a cache point when the client marked a part of it."""
    content = message.get("content")
    marked = isinstance(content, list) and any(part.get("cache_control") is not None for part in content)
    return [_tool_result_block(message), *([cache_point()] if marked else [])]


def _messages(body: dict) -> tuple[list[dict], list[dict]]:
    """System blocks (a block per text part, so a part's cache point stays where the client put it) and Converse
    messages."""
    return conversation(
        body,
        api=API,
        system_blocks=_content_blocks,
        content_blocks=_content_blocks,
        tool_use_block=_tool_use_block,
        tool_result_blocks=_tool_result_blocks,
    )


def _tool_specs(tool: dict) -> list[dict]:
    """An OpenAI tool as Converse's, followed by a cache point when it carries ``cache_control`` (LiteLLM's place)."""
    spec = {
        "name": tool["function"]["name"],
        "description": tool["function"].get("description") or tool["function"]["name"],
        "inputSchema": {"json": tool["function"].get("parameters") or {"type": "object", "properties": {}}},
    }
    return [{"toolSpec": spec}, *([cache_point()] if tool.get("cache_control") is not None else [])]


def _tool_config(body: dict) -> dict:
    config = {"tools": [spec for tool in body["tools"] for spec in _tool_specs(tool)]}
    choice = body.get("tool_choice")
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    return config


def _with_checkpoints(request: dict, checkpoints: prompt_cache.Checkpoints) -> dict:
    """The request with a cache point after each part of its prefix the gateway marks."""
    messages = request["messages"]
    parts = (
        (checkpoints.tools, (request.get("toolConfig") or {}).get("tools") or []),
        (checkpoints.system, request.get("system") or []),
        (checkpoints.history, messages[-2]["content"] if len(messages) > 1 else []),
    )
    for marked, blocks in parts:
        if marked and blocks:
            blocks.append(cache_point())
    return request


def tools_sent(body: dict) -> bool:
    """Converse has no "none" tool choice: under tool_choice none the tools are left out entirely."""
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


def converse_request(body: dict, *, checkpoints: prompt_cache.Checkpoints = prompt_cache.NO_CHECKPOINTS) -> dict:
    """OpenAI chat completion request → keyword arguments of Converse / ConverseStream, with the gateway's prompt-cache
    ``checkpoints`` (``prompt_cache.gateway_checkpoints``). The client's own ``cache_control`` is checked first: what
    Bedrock would refuse or bill beyond the catalog's prices raises CacheControlRefused (``prompt_cache.client_marks``;
    a cache point is always of the default, 5-minute cache); a field or a message this translation would drop although
    it changes the answer or its cost raises RequestRefused."""
    refuse_untranslated(API, body)
    if body.get("parallel_tool_calls") is False and tools_sent(body):
        # Converse's tool choice has no switch for it: the model could still call several tools at once.
        raise unsupported_by(API, body, param="parallel_tool_calls", what="turning parallel tool calls off")
    prompt_cache.client_marks(body, tools_sent=tools_sent(body))
    system, messages = _messages(body)
    request = {"modelId": body["model"], "messages": messages}
    if system:
        request["system"] = system
    inference = {}
    if max_tokens := requested_max_tokens(body):
        inference["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        inference["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        inference["topP"] = body["top_p"]
    if stop := stop_sequences(body):
        inference["stopSequences"] = stop
    if inference:
        request["inferenceConfig"] = inference
    if (top_k := body.get("top_k")) is not None and top_k >= 0:
        # Converse has no top_k of its own: Claude takes it as a field of its model's request; -1 (vLLM's "no cut")
        # is what leaving it out means.
        if CLAUDE not in body["model"].lower():
            raise unsupported_by(API, body, param="top_k", what="top_k (on Bedrock, only Claude models take it)")
        request["additionalModelRequestFields"] = {"top_k": top_k}
    if tools_sent(body):
        request["toolConfig"] = _tool_config(body)
    return _with_checkpoints(request, checkpoints)


async def _request(body: dict, provider_cache: str) -> dict:
    checkpoints = await prompt_cache.gateway_checkpoints(
        body, kind="bedrock", provider_cache=provider_cache, tools_sent=tools_sent(body)
    )
    return converse_request(body, checkpoints=checkpoints)


USAGE_FIELDS = UsageFields("inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens", "outputTokens")


def finish_reason(stop_reason) -> str | None:
    """The chat finish reason of Bedrock's stop reason. One the table does not know (`malformed_model_output`,
    `malformed_tool_use`, one added since) is passed on as it came, as an OpenAI-compatible upstream's own is: the
    cache takes no such answer for a whole one."""
    return FINISH_REASONS.get(stop_reason, stop_reason)


def chat_completion_body(response: dict, *, model: str) -> dict:
    """Converse response → OpenAI chat.completion body."""
    blocks = response["output"]["message"]["content"]
    return chat_completion_reply(
        reply_id=(response.get("ResponseMetadata") or {}).get("RequestId", ""),
        model=model,
        text="".join(block["text"] for block in blocks if "text" in block),
        tool_calls=[
            openai_tool_call(
                call_id=block["toolUse"]["toolUseId"],
                name=block["toolUse"]["name"],
                arguments=block["toolUse"]["input"],
            )
            for block in blocks
            if "toolUse" in block
        ],
        finish_reason=finish_reason(response.get("stopReason")),
        usage=USAGE_FIELDS.reported_usage(response.get("usage")),
    )


def upstream_error(provider: ProviderEntry, exc: Exception, started: float) -> UpstreamError:
    """A boto3 failure as the upstream error the pipeline and the fallbacks understand."""
    elapsed = elapsed_ms_since(started)
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return UpstreamTimeout(
            f"provider {provider.name} did not answer within {provider.timeout_seconds:g}s",
            elapsed_ms=elapsed,
            request_sent=isinstance(exc, ReadTimeoutError),
        )
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | HTTPClientError):
        return UpstreamConnectionError(f"cannot reach provider {provider.name}: {exc}", elapsed_ms=elapsed)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error") or {}
        # Event-stream exceptions name the code as a member (throttlingException); HTTP errors capitalise it.
        code = error.get("Code", "")[:1].upper() + error.get("Code", "")[1:]
        message = f"provider {provider.name} answered {code}: {error.get('Message', '')}"
        if code == "ModelTimeoutException":
            return UpstreamTimeout(message, elapsed_ms=elapsed)
        metadata = exc.response.get("ResponseMetadata") or {}
        status = STATUS_BY_ERROR_CODE.get(code) or metadata.get("HTTPStatusCode") or 500
        return UpstreamRejected(
            message,
            upstream_status=status,
            error_body={"error": {"message": error.get("Message", ""), "code": code}},
            elapsed_ms=elapsed,
            retry_after=parse_retry_after(metadata.get("HTTPHeaders") or {}),
        )
    if isinstance(exc, BotoCoreError):
        return UpstreamError(f"provider {provider.name} could not be called: {exc}", elapsed_ms=elapsed)
    raise exc


async def chat_completion(
    provider: ProviderEntry, body: dict, *, provider_cache: str = prompt_cache.OFF
) -> UpstreamReply:
    started = time.perf_counter()
    request = await _request(body, provider_cache)

    def converse() -> dict:
        return _client_for(provider).converse(**request)

    try:
        response = await asyncio.get_running_loop().run_in_executor(_pool(), converse)
    except Exception as exc:
        raise upstream_error(provider, exc, started) from exc
    return translated_reply(
        provider,
        lambda: chat_completion_body(response, model=body["model"]),
        what="a Converse response",
        started=started,
    )


class ChunkTranslator(ChunkBuilder):
    """ConverseStream events → OpenAI chat.completion.chunk payloads."""

    def __init__(self, *, model: str, include_usage: bool):
        super().__init__(model=model, include_usage=include_usage)
        self.stopped = False

    def translate(self, event: dict) -> list[dict]:
        if "messageStart" in event:
            return [self.delta({"role": "assistant", "content": ""})]
        if "contentBlockStart" in event:
            start = event["contentBlockStart"]
            tool_use = (start.get("start") or {}).get("toolUse")
            if not tool_use:
                return []
            block_index = start["contentBlockIndex"]
            return [self.tool_call_start(block_index=block_index, call_id=tool_use["toolUseId"], name=tool_use["name"])]
        if "contentBlockDelta" in event:
            block = event["contentBlockDelta"]
            delta = block["delta"]
            if "text" in delta:
                return [self.delta({"content": delta["text"]})]
            if "toolUse" in delta:
                partial_json = delta["toolUse"]["input"]
                return self.tool_call_arguments(block_index=block["contentBlockIndex"], partial_json=partial_json)
            return []
        if "messageStop" in event:
            self.stopped = True
            return [self.delta({}, finish_reason(event["messageStop"].get("stopReason")))]
        if "metadata" in event and self.include_usage:
            # Metadata without usage has no usage chunk: the gateway counts the stream, rather than charge nothing.
            usage = USAGE_FIELDS.reported_usage(event["metadata"].get("usage"))
            return [self.usage(usage)] if usage is not None else []
        return []


_OPENED, _EVENT, _END, _FAILED = "opened", "event", "end", "failed"


class BedrockStream:
    """A ConverseStream read on a pool thread and handed over through a queue, as OpenAI chunks.

    Opening waits for the first event, so a provider that fails before sending anything fails the open
    (where a fallback can still take over).
    """

    def __init__(self, provider: ProviderEntry, body: dict, started: float, request: dict):
        self.provider = provider
        self.started = started
        self.translator = ChunkTranslator(model=body["model"], include_usage=wants_usage_chunk(body))
        self._request = request
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._event_stream = None
        self._cancelled = False
        self._pending: tuple[str, object] | None = None

    def _hand_over(self, kind: str, item: object = None) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, item))
        except RuntimeError:  # the loop is gone: nobody is reading any more
            return False
        return True

    def _pump(self) -> None:
        """Runs on a pool thread: the blocking call and the blocking reads."""
        try:
            self._event_stream = _client_for(self.provider).converse_stream(**self._request)["stream"]
        except Exception as exc:
            self._hand_over(_FAILED, exc)
            return
        if not self._hand_over(_OPENED):
            self._event_stream.close()
            return
        try:
            for event in self._event_stream:
                if self._cancelled or not self._hand_over(_EVENT, event):
                    return
            self._hand_over(_END)
        except Exception as exc:
            if not self._cancelled:
                self._hand_over(_FAILED, exc)
        finally:
            self._event_stream.close()

    async def _next(self) -> tuple[str, object]:
        kind, item = await self._queue.get()
        if kind == _FAILED:
            raise upstream_error(self.provider, item, self.started) from item
        return kind, item

    async def open(self) -> None:
        self._loop.run_in_executor(_pool(), self._pump)
        await self._next()
        self._pending = await self._next()

    async def events(self) -> AsyncIterator[str]:
        while True:
            if self._pending is not None:
                (kind, event), self._pending = self._pending, None
            else:
                kind, event = await self._next()
            if kind == _END:
                if self.translator.stopped:
                    yield SSE_DONE
                return
            for sse in translated_events(self.provider, self.translator.translate, event, elapsed_ms=self.elapsed_ms()):
                yield sse

    @property
    def stop_sequence(self) -> None:
        """Converse's stop reason does not say which stop sequence matched."""
        return None

    def partial_usage(self) -> None:
        """Converse reports usage in its closing metadata event only."""
        return None

    def elapsed_ms(self) -> int:
        return elapsed_ms_since(self.started)

    async def aclose(self) -> None:
        self._cancelled = True
        if self._event_stream is not None:
            # Closing the connection stops the reading thread (and the generation) early.
            await self._loop.run_in_executor(_pool(), self._event_stream.close)


async def open_chat_stream(
    provider: ProviderEntry, body: dict, *, provider_cache: str = prompt_cache.OFF
) -> BedrockStream:
    started = time.perf_counter()
    request = await _request(body, provider_cache)
    return await stream_opened(BedrockStream(provider, body, started, request))
