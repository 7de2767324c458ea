"""The upstream call and what follows it: fallbacks down the chain, pricing, the ledger row, the response.

It composes the apps in the one direction the design allows: gateway → billing → routing → tenants.
"""

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
from asgiref.sync import sync_to_async
from django.http import HttpResponse, StreamingHttpResponse

from billing.budgets.reservations import reservation_settle
from billing.costs import format_cost
from billing.services import UsageEvent, usage_record_create
from llmops.gateway.call import GatewayCall, Usage
from llmops.gateway.errors import GatewayError
from llmops.gateway.planning import ChatPlan
from llmops.metrics import record_request_metrics
from routing import upstream
from routing.catalog import ModelEntry
from routing.resilience import FallbackResult, RetryPolicy, call_with_fallbacks
from routing.tokens import count_chat_tokens, count_text_tokens

logger = logging.getLogger(__name__)

RETRY_POLICY = RetryPolicy()
# Settlements started while a client disconnected mid-stream; held so they are not garbage-collected.
_pending_writes: set[asyncio.Task] = set()


async def record_usage(event: UsageEvent) -> None:
    await sync_to_async(usage_record_create, thread_sensitive=False)(event=event)


async def finish(call: GatewayCall, *, http_status: int, usage: Usage | None = None, error_code: str = "") -> None:
    """Settle the budget reservation with what was really spent, then write the ledger row."""
    event = call.usage_event(http_status=http_status, usage=usage, error_code=error_code)
    if call.reservation is not None and not call.reservation.settled:
        remaining = await reservation_settle(call.reservation, actual=event.cost_usd)
        if remaining is not None:
            call.budget_remaining_usd = format_cost(remaining)
    record_request_metrics(event)
    await record_usage(event)


def upstream_failure(error: upstream.UpstreamError) -> GatewayError:
    """What the client is told when the upstream could not answer (after retries and fallbacks)."""
    if isinstance(error, upstream.UpstreamTimeout):
        return GatewayError(error.message, status=504, code=error.code)
    if isinstance(error, upstream.UpstreamRejected):
        status = error.upstream_status
        if status == 429:
            return GatewayError(error.message, status=429, code="upstream_rate_limited")
        if status in (400, 404, 409, 413, 422):
            return GatewayError(error.message, status=400, code="upstream_invalid_request")
    status = 503 if error.code == "upstream_circuit_open" else 502
    return GatewayError(error.message, status=status, code=error.code)


def _for_model(body: dict, model: ModelEntry) -> dict:
    return {**body, "model": model.upstream_name}


def _estimated_usage(body: dict, completion_text: str, model: ModelEntry) -> Usage:
    return Usage(
        prompt_tokens=count_chat_tokens(body["messages"], model=model.upstream_name),
        completion_tokens=count_text_tokens(completion_text, model=model.upstream_name),
        estimated=True,
    )


async def _call_chain(call: GatewayCall, plan: ChatPlan, attempt) -> FallbackResult:
    try:
        result = await call_with_fallbacks(plan.chain, attempt, policy=RETRY_POLICY)
    except upstream.UpstreamError as error:
        call.attempts = error.attempts
        call.upstream_ms = error.elapsed_ms
        if error.last_model is not None:
            call.served = error.last_model
        raise upstream_failure(error) from error
    call.served, call.attempts = result.served, result.attempts
    return result


async def complete_chat(call: GatewayCall, plan: ChatPlan) -> HttpResponse:
    result = await _call_chain(
        call, plan, lambda model: upstream.chat_completion(model.provider, _for_model(plan.body, model))
    )
    reply = result.value
    call.upstream_ms = reply.elapsed_ms
    if isinstance(reply.body.get("usage"), dict):
        usage = Usage.from_provider(reply.body["usage"])
    else:
        text = "".join((choice.get("message") or {}).get("content") or "" for choice in reply.body.get("choices") or [])
        usage = _estimated_usage(plan.body, text, call.served)
    await finish(call, http_status=200, usage=usage)
    response = HttpResponse(reply.raw, content_type="application/json")
    for name, value in call.response_headers().items():
        response[name] = value
    return response


class StreamRelay:
    """Passes the upstream's SSE events to the client as they arrive and records the ledger row at the end.

    The upstream is always asked for a usage chunk; the client sees it only if it asked too.
    """

    def __init__(self, call: GatewayCall, body: dict, stream):
        self.call = call
        self.body = body
        self.stream = stream
        self.client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.usage: Usage | None = None
        self.content_parts: list[str] = []
        self.recorded = False

    async def events(self) -> AsyncIterator[bytes]:
        try:
            async for event in self.stream.events():
                data = event[6:] if event.startswith("data: ") else None
                if data == "[DONE]":
                    await self._record(http_status=200)
                    yield f": x-llmops-cost-usd={self.call.cost_usd}\n\ndata: [DONE]\n\n".encode()
                    return
                if data is not None and not self._take(data):
                    continue
                yield f"{event}\n\n".encode()
            raise upstream.UpstreamStreamTruncated(
                f"provider {self.stream.provider.name} ended the stream before [DONE]",
                elapsed_ms=self.stream.elapsed_ms(),
            )
        except upstream.UpstreamError as error:
            failure = upstream_failure(error)
            await self._record(http_status=failure.status_code, error_code=failure.code)
            payload = {"error": {"message": failure.message, "type": failure.error_type, "code": failure.code}}
            yield b"data: " + orjson.dumps(payload) + b"\n\n"
        finally:
            await self.stream.aclose()
            if not self.recorded:
                # The client went away mid-stream: charge what was generated until then.
                self.recorded = True
                task = asyncio.get_running_loop().create_task(
                    finish(self.call, http_status=499, usage=self._usage(), error_code="client_disconnected")
                )
                _pending_writes.add(task)
                task.add_done_callback(_pending_writes.discard)

    def _take(self, data: str) -> bool:
        """Note what the chunk tells about usage and content; return whether the client should see it."""
        if '"usage"' not in data and '"content"' not in data:
            return True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.content_parts.append(content)
        if isinstance(chunk.get("usage"), dict):
            self.usage = Usage.from_provider(chunk["usage"])
            return self.client_wants_usage or bool(chunk.get("choices"))
        return True

    def _usage(self) -> Usage:
        return self.usage or _estimated_usage(self.body, "".join(self.content_parts), self.call.served)

    async def _record(self, *, http_status: int, error_code: str = "") -> None:
        self.call.upstream_ms = self.stream.elapsed_ms()
        self.recorded = True
        await finish(self.call, http_status=http_status, usage=self._usage(), error_code=error_code)


async def stream_chat(call: GatewayCall, plan: ChatPlan) -> StreamingHttpResponse:
    body = plan.body
    stream_options = {**(body.get("stream_options") or {}), "include_usage": True}

    def open_stream(model: ModelEntry):
        return upstream.open_chat_stream(model.provider, {**_for_model(body, model), "stream_options": stream_options})

    result = await _call_chain(call, plan, open_stream)
    stream = result.value
    call.upstream_ms = stream.elapsed_ms()
    response = StreamingHttpResponse(StreamRelay(call, body, stream).events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in call.response_headers().items():
        response[name] = value
    return response
