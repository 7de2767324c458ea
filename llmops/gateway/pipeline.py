"""The chat completion pipeline: resolve the model, call upstream, price the usage, record the ledger row.

It composes the apps in the one direction the design allows: gateway → billing → routing → tenants.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from asgiref.sync import sync_to_async
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone

from billing.costs import format_cost, usage_cost
from billing.models import CacheStatus
from billing.services import UsageEvent, usage_record_create
from llmops.gateway.errors import GatewayError
from routing import upstream
from routing.catalog import DEFAULT_MODEL_ALIAS, ModelCatalog, ModelEntry
from routing.tokens import count_chat_tokens, count_text_tokens
from tenants.authentication import KeyPrincipal

logger = logging.getLogger(__name__)

# Ledger writes started while a client disconnected mid-stream; held so they are not garbage-collected.
_pending_writes: set[asyncio.Task] = set()


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @classmethod
    def from_provider(cls, usage: dict) -> "Usage":
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


@dataclass(slots=True)
class GatewayCall:
    """One request as it moves through the pipeline; becomes its ledger row."""

    principal: KeyPrincipal
    endpoint: str
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=timezone.now)
    requested_model: str = ""
    served: ModelEntry | None = None
    is_stream: bool = False
    upstream_ms: int | None = None
    cost_usd: str | None = None

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def overhead_ms(self) -> float:
        total = (time.perf_counter() - self.started) * 1000
        return max(total - (self.upstream_ms or 0), 0.0)

    def usage_event(self, *, http_status: int, usage: Usage | None = None, error_code: str = "") -> UsageEvent:
        usage = usage or Usage()
        cost = (
            usage_cost(
                prices=self.served.prices,
                prompt_tokens=usage.prompt_tokens,
                cached_tokens=usage.cached_tokens,
                completion_tokens=usage.completion_tokens,
            )
            if self.served
            else None
        )
        event = UsageEvent(
            request_id=self.request_id,
            tenant_id=self.principal.tenant_id,
            team_id=self.principal.team_id,
            api_key_id=self.principal.key_id,
            created_at=self.created_at,
            endpoint=self.endpoint,
            http_status=http_status,
            requested_model=self.requested_model,
            served_model=self.served.name if self.served else "",
            is_stream=self.is_stream,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            usage_estimated=usage.estimated,
            upstream_latency_ms=self.upstream_ms,
            total_latency_ms=self.elapsed_ms(),
            cache_status=CacheStatus.MISS,
            error_code=error_code,
        )
        if cost is not None:
            event.cost_usd = cost
            self.cost_usd = format_cost(cost)
        return event

    def response_headers(self) -> dict[str, str]:
        headers = {"x-llmops-request-id": self.request_id, "x-llmops-cache": CacheStatus.MISS}
        if self.served:
            headers["x-llmops-model"] = self.served.name
        if self.cost_usd is not None:
            headers["x-llmops-cost-usd"] = self.cost_usd
        headers["x-llmops-overhead-ms"] = f"{self.overhead_ms():.2f}"
        return headers


async def record_usage(event: UsageEvent) -> None:
    await sync_to_async(usage_record_create, thread_sensitive=False)(event=event)


def resolve_model(catalog: ModelCatalog, *, tenant_id: int, requested: str) -> ModelEntry:
    access = catalog.access_for(tenant_id)
    name = requested
    if requested == DEFAULT_MODEL_ALIAS:
        if access.default_model is None:
            raise GatewayError(
                "Your tenant has no default model configured; name a model.",
                status=400,
                code="no_default_model",
                param="model",
            )
        name = access.default_model
    model = catalog.models.get(name)
    if model is None:
        raise GatewayError(
            f"The model `{requested}` does not exist. GET /v1/models lists the models your key may use.",
            status=404,
            code="model_not_found",
            param="model",
        )
    if name not in access.allowed_models:
        raise GatewayError(
            f"Your key is not allowed to use the model `{requested}`. GET /v1/models lists the models it may use.",
            status=403,
            code="model_not_allowed",
            param="model",
        )
    return model


def upstream_failure(error: upstream.UpstreamError) -> GatewayError:
    """What the client is told when the upstream could not answer."""
    if isinstance(error, upstream.UpstreamTimeout):
        return GatewayError(error.message, status=504, code=error.code)
    if isinstance(error, upstream.UpstreamRejected):
        status = error.upstream_status
        if status == 429:
            return GatewayError(error.message, status=429, code="upstream_rate_limited")
        if status in (400, 404, 409, 422):
            return GatewayError(error.message, status=400, code="upstream_invalid_request")
    return GatewayError(error.message, status=502, code=error.code)


def _upstream_body(body: dict, served: ModelEntry) -> dict:
    return {**body, "model": served.upstream_name}


def _estimated_usage(body: dict, completion_text: str, model: ModelEntry) -> Usage:
    return Usage(
        prompt_tokens=count_chat_tokens(body["messages"], model=model.upstream_name),
        completion_tokens=count_text_tokens(completion_text, model=model.upstream_name),
        estimated=True,
    )


async def complete_chat(call: GatewayCall, body: dict) -> HttpResponse:
    served = call.served
    try:
        reply = await upstream.chat_completion(served.provider, _upstream_body(body, served))
    except upstream.UpstreamError as error:
        call.upstream_ms = error.elapsed_ms
        raise upstream_failure(error) from error
    call.upstream_ms = reply.elapsed_ms
    if isinstance(reply.body.get("usage"), dict):
        usage = Usage.from_provider(reply.body["usage"])
    else:
        text = "".join((choice.get("message") or {}).get("content") or "" for choice in reply.body.get("choices") or [])
        usage = _estimated_usage(body, text, served)
    await record_usage(call.usage_event(http_status=200, usage=usage))
    response = HttpResponse(reply.raw, content_type="application/json")
    for name, value in call.response_headers().items():
        response[name] = value
    return response


class StreamRelay:
    """Passes the upstream's SSE events to the client as they arrive and records the ledger row at the end.

    The upstream is always asked for a usage chunk; the client sees it only if it asked too.
    """

    def __init__(self, call: GatewayCall, body: dict, stream: upstream.UpstreamStream):
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
                event = self.call.usage_event(http_status=499, usage=self._usage(), error_code="client_disconnected")
                task = asyncio.get_running_loop().create_task(record_usage(event))
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
        await record_usage(self.call.usage_event(http_status=http_status, usage=self._usage(), error_code=error_code))


async def stream_chat(call: GatewayCall, body: dict) -> StreamingHttpResponse:
    served = call.served
    upstream_body = _upstream_body(body, served)
    upstream_body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    try:
        stream = await upstream.open_chat_stream(served.provider, upstream_body)
    except upstream.UpstreamError as error:
        call.upstream_ms = error.elapsed_ms
        raise upstream_failure(error) from error
    call.upstream_ms = stream.elapsed_ms()
    response = StreamingHttpResponse(StreamRelay(call, body, stream).events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in call.response_headers().items():
        response[name] = value
    return response
