"""A chat completion presented as the Responses API's Response object, and a chat completion stream as the Responses
stream's events, in the shapes the official `openai` SDK reads (`client.responses.create`, `.stream`)."""

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import orjson

from routing.providers.base import message_text, served_tier

# A chat finish reason that stops an answer short, and the reason Responses gives for it.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(frozen=True, slots=True)
class ResponseIdentity:
    """What names one response and its message item; the ids carry the request id, so a response leads to its
    ledger row."""

    response_id: str
    message_id: str
    created_at: int

    @classmethod
    def of(cls, *, request_id: str, created_at: int) -> "ResponseIdentity":
        suffix = request_id.removeprefix("req_")
        return cls(response_id=f"resp_{suffix}", message_id=f"msg_{suffix}", created_at=created_at)


def response_usage(usage: dict | None) -> dict | None:
    """Chat usage (prompt_tokens, completion_tokens and their details) in the Responses API's terms."""
    if not isinstance(usage, dict):
        return None
    input_tokens = usage.get("prompt_tokens") or 0
    output_tokens = usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def _text_config(request: dict) -> dict:
    text = request.get("text") or {}
    return {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"}


def response_object(
    request: dict,
    identity: ResponseIdentity,
    *,
    model: str,
    status: str,
    output: list[dict],
    usage: dict | None = None,
    incomplete_reason: str | None = None,
    error: dict | None = None,
    service_tier: str | None = None,
) -> dict:
    """A Response: the request's settings as the gateway applied them, and what it answered; ``service_tier`` is the
    tier the provider says it served the answer at, when it says one (else the one the request asked for)."""
    return {
        "id": identity.response_id,
        "object": "response",
        "created_at": identity.created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "metadata": request.get("metadata") or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {"effort": (request.get("reasoning") or {}).get("effort"), "summary": None},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": service_tier or request.get("service_tier"),
        "store": False,
        "temperature": request.get("temperature", 1.0),
        "text": _text_config(request),
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": request.get("user"),
    }


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _refusal(text: str) -> dict:
    return {"type": "refusal", "refusal": text}


def message_item(identity: ResponseIdentity, *, status: str, content: list[dict]) -> dict:
    return {"type": "message", "id": identity.message_id, "status": status, "role": "assistant", "content": content}


def _status(finish_reason: str | None) -> tuple[str, str | None]:
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    return ("incomplete", reason) if reason else ("completed", None)


def response_from_chat(request: dict, identity: ResponseIdentity, completion: dict) -> dict:
    """The Response of a chat completion's first (only) choice: one message holding its text, or its refusal."""
    choice = completion["choices"][0]
    message = choice.get("message") or {}
    status, reason = _status(choice.get("finish_reason"))
    content = [_output_text(message_text(message.get("content")))]
    if message.get("refusal"):
        content = [_refusal(message["refusal"])]
    return response_object(
        request,
        identity,
        model=completion.get("model") or request["model"],
        status=status,
        output=[message_item(identity, status=status, content=content)],
        usage=response_usage(completion.get("usage")),
        incomplete_reason=reason,
        service_tier=served_tier(completion),
    )


@dataclass(slots=True)
class ResponseStream:
    """Turns the chat pipeline's SSE events (chat.completion.chunk data, the usage chunk, the cost comment, [DONE] or
    an error event) into the Responses stream: response.created and .in_progress, the message item added, its part
    added with the answer's first piece (an output_text part, or a refusal part when the model refuses), a
    response.output_text.delta (or response.refusal.delta) per piece, then the text (or refusal), part and item done
    and response.completed (response.incomplete when the answer was cut short), or an error and response.failed.
    Every event has its `type` and `sequence_number`; the cost comment passes through as it came."""

    request: dict
    identity: ResponseIdentity
    model: str
    sequence: int = 0
    text: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    part_added: bool = False
    finish_reason: str | None = None
    usage: dict | None = None
    service_tier: str | None = None

    def _event(self, kind: str, **fields) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"

    def _response(self, status: str, **fields) -> dict:
        return response_object(self.request, self.identity, model=self.model, status=status, **fields)

    def _part(self) -> dict:
        return {"item_id": self.identity.message_id, "output_index": 0, "content_index": 0}

    def opening(self) -> list[bytes]:
        in_progress = self._response("in_progress", output=[])
        return [
            self._event("response.created", response=in_progress),
            self._event("response.in_progress", response=in_progress),
            self._event(
                "response.output_item.added",
                output_index=0,
                item=message_item(self.identity, status="in_progress", content=[]),
            ),
        ]

    def _part_added(self, part: dict) -> list[bytes]:
        """The message's one content part, added with its first piece: whether it is text or a refusal is known
        only then."""
        if self.part_added:
            return []
        self.part_added = True
        return [self._event("response.content_part.added", **self._part(), part=part)]

    def closing(self) -> list[bytes]:
        status, reason = _status(self.finish_reason)
        if self.refusal:
            refusal = "".join(self.refusal)
            part = _refusal(refusal)
            done = [self._event("response.refusal.done", **self._part(), refusal=refusal)]
        else:
            text = "".join(self.text)
            part = _output_text(text)
            done = [
                *self._part_added(_output_text("")),
                self._event("response.output_text.done", **self._part(), text=text, logprobs=[]),
            ]
        item = message_item(self.identity, status=status, content=[part])
        usage = response_usage(self.usage)
        final = self._response(
            status, output=[item], usage=usage, incomplete_reason=reason, service_tier=self.service_tier
        )
        return [
            *done,
            self._event("response.content_part.done", **self._part(), part=part),
            self._event("response.output_item.done", output_index=0, item=item),
            self._event(f"response.{status}", response=final),
        ]

    def failure(self, error: dict) -> list[bytes]:
        code, message = error.get("code"), error.get("message") or "The response failed."
        failed = self._response("failed", output=[], error={"code": code, "message": message})
        return [
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=failed),
        ]

    def take(self, event: bytes) -> list[bytes]:
        """The Responses events one chat pipeline event becomes."""
        if event.startswith(b":"):
            return [event + b"\n\n"]
        if not event.startswith(b"data: "):
            return []
        data = event[6:]
        if data == b"[DONE]":
            return self.closing()
        chunk = orjson.loads(data)
        if isinstance(chunk.get("error"), dict):
            return self.failure(chunk["error"])
        self.model = chunk.get("model") or self.model
        self.service_tier = served_tier(chunk) or self.service_tier
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        deltas = []
        for choice in chunk.get("choices") or []:
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            delta = choice.get("delta") or {}
            piece, refused = delta.get("content"), delta.get("refusal")
            if piece and not self.refusal:
                self.text.append(piece)
                deltas += self._part_added(_output_text(""))
                deltas.append(self._event("response.output_text.delta", **self._part(), delta=piece, logprobs=[]))
            if refused and not self.text:
                self.refusal.append(refused)
                deltas += self._part_added(_refusal(""))
                deltas.append(self._event("response.refusal.delta", **self._part(), delta=refused))
        return deltas

    async def events(self, chat_events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """One piece of the Responses stream for each piece of the chat stream, as the chat relay sends one for each
        event of the upstream's: the client is sent as often, and a client that leaves is most likely noticed while
        the relay waits on the upstream, which ends it and records the request at once. The opening events go with
        the first piece, so the relay has started before anything is sent."""
        pending = b""
        async with aclosing(chat_events):
            async for part in chat_events:
                events = self.opening() if self.sequence == 0 else []
                pending += part
                *complete, pending = pending.split(b"\n\n")
                for event in complete:
                    events += self.take(event)
                if events:
                    yield b"".join(events)
