"""The pipeline's chat completion answers as Anthropic's: a Message object, or a message stream's events.

Usage in Anthropic's terms: ``input_tokens`` counts only the prompt tokens neither read from nor written to the
provider's cache (``cache_read_input_tokens``, ``cache_creation_input_tokens``), so the three add up to the chat
completion's ``prompt_tokens``.

The stop reason: ``stop`` → ``end_turn``, ``length`` → ``max_tokens``, ``content_filter`` → ``refusal``; a reason the
gateway does not know (an upstream's own, such as Bedrock's ``malformed_model_output``) is passed on as it came, as
the chat completion passes it, so a client can tell it from a whole answer; none at all reads ``end_turn``. A stop on
one of the request's stop sequences is ``stop_sequence`` (with ``stop_sequence`` set) when the upstream says which one
matched (``GatewayCall.stop_sequence``: the Anthropic adapter does, as does vLLM with a choice's ``stop_reason``, and a
cached answer keeps it); OpenAI's own API does not, and such a stop reads ``end_turn``.
"""

from collections.abc import AsyncIterator

import orjson

from billing.ledger.costs import Usage
from llmops.gateway.call import GatewayCall
from llmops.gateway.messages.errors import stream_error_type
from routing.providers.base import message_text

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}
SSE_SEPARATOR = b"\n\n"
DONE = b"data: [DONE]"


def message_id(call: GatewayCall) -> str:
    """The message's id, after the request's (``req_<hex>`` → ``msg_<hex>``), so it finds its ledger row."""
    return "msg_" + call.request_id.removeprefix("req_")


# Anthropic's stop reason for an answer the model refused to give.
REFUSAL = "refusal"


def stop_reason(finish_reason: str | None, matched: str | None, stop_sequences: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of an answer that finished for ``finish_reason``, on the stop sequence ``matched``
    when the upstream said which."""
    if finish_reason == "stop" and matched is not None and matched in stop_sequences:
        return "stop_sequence", matched
    if not finish_reason:
        return "end_turn", None
    return STOP_REASONS.get(finish_reason, finish_reason), None


def message_usage(usage: Usage) -> dict:
    uncached = max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    return {
        "input_tokens": uncached,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def _answer_usage(call: GatewayCall, usage) -> Usage:
    """The answer's own usage (on a cache hit, the stored answer's); else what the ledger row was priced at."""
    if isinstance(usage, dict):
        return Usage.from_provider(usage)
    return call.settled_usage or Usage()


def anthropic_message(call: GatewayCall, answer: dict, *, stop_sequences: list[str]) -> dict:
    """A chat.completion body (checked by the pipeline: a non-empty list of choices) as an Anthropic Message."""
    choice = answer["choices"][0]
    message = choice.get("message") or {}
    text = message_text(message.get("content"))
    reason, sequence = stop_reason(choice.get("finish_reason"), call.stop_sequence, stop_sequences)
    if message.get("refusal"):
        # OpenAI's refusal in Anthropic's terms: its explanation as the text, and the stop reason that says so.
        text, reason, sequence = text or message["refusal"], REFUSAL, None
    return {
        "id": message_id(call),
        "type": "message",
        "role": "assistant",
        "model": answer.get("model") or call.requested_model,
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": message_usage(_answer_usage(call, answer.get("usage"))),
    }


def sse(kind: str, payload: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + SSE_SEPARATOR


class MessageStream:
    """The chat completion chunks the pipeline streams (its relay, or a cached answer's replay), re-emitted as
    Anthropic's events: message_start, ping, content_block_start, content_block_delta (text_delta) …,
    content_block_stop, message_delta (stop reason and usage), message_stop; a failure as an ``error`` event.

    message_start carries the prompt as the gateway counted it; message_delta the usage the answer reported (or the
    ledger's count), which the anthropic SDK takes over, as Anthropic's own counts are cumulative there. The cost
    comment (``: x-llmops-cost-usd=…``) is passed on just before the closing events; SSE clients ignore comments.
    """

    def __init__(self, call: GatewayCall, *, stop_sequences: list[str]):
        self.call = call
        self.stop_sequences = stop_sequences
        self.started = False
        self.block_open = False
        self.finish_reason: str | None = None
        self.refused = False
        self.usage = None

    async def events(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        pending = b""
        try:
            async for piece in chunks:
                pending += piece
                *events, pending = pending.split(SSE_SEPARATOR)
                translated = b"".join(self._translate(event) for event in events if event)
                if translated:
                    yield translated
        finally:
            await chunks.aclose()

    def _translate(self, event: bytes) -> bytes:
        if event.startswith(b":"):
            return event + SSE_SEPARATOR
        if event == DONE:
            return self._finish()
        if not event.startswith(b"data: "):
            return b""
        payload = orjson.loads(event[6:])
        if "error" in payload and "choices" not in payload:
            error = payload["error"]
            kind = stream_error_type(error.get("type"), error.get("code"))
            details = {"error_code": error.get("code")}
            return sse("error", {"error": {"type": kind, "message": error.get("message", ""), "details": details}})
        out = [] if self.started else [self._start(payload)]
        for choice in payload.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content") or delta.get("refusal")
            self.refused |= bool(delta.get("refusal"))
            if content:
                out.append(self._text(content))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if payload.get("usage") is not None:
            self.usage = payload["usage"]
        return b"".join(out)

    def _start(self, chunk: dict) -> bytes:
        self.started = True
        message = {
            "id": message_id(self.call),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self.call.requested_model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": message_usage(Usage(prompt_tokens=self.call.prompt_tokens_after_compression or 0)),
        }
        return sse("message_start", {"message": message}) + sse("ping", {})

    def _text(self, text: str) -> bytes:
        opening = b""
        if not self.block_open:
            self.block_open = True
            opening = sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        return opening + sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})

    def _finish(self) -> bytes:
        out = [] if self.started else [self._start({})]
        if self.block_open:
            out.append(sse("content_block_stop", {"index": 0}))
        reason, sequence = stop_reason(self.finish_reason, self.call.stop_sequence, self.stop_sequences)
        if self.refused:
            reason, sequence = REFUSAL, None
        usage = message_usage(_answer_usage(self.call, self.usage))
        out.append(sse("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}))
        out.append(sse("message_stop", {}))
        return b"".join(out)
