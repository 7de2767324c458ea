"""The upstream call and what follows it: fallbacks down the chain, pricing, the ledger row, the response.

It composes the apps in the one direction the design allows: gateway → billing → routing → tenants.
"""

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import replace

import orjson
from django.http import HttpResponse, StreamingHttpResponse

from billing.ledger.costs import Usage
from billing.models import CacheStatus
from core.background import run_in_background
from llmops.gateway.call import GatewayCall, UsageCeiling, estimated_usage, reply_usage
from llmops.gateway.chat.failed_attempts import (
    Estimate,
    failed_attempts_charge,
    failed_attempts_charge_detached,
    failure_usage,
)
from llmops.gateway.chat.planning import ChatPlan, refusal_error
from llmops.gateway.chat.recording import finish
from llmops.gateway.errors import GatewayError, error_body, internal_error, upstream_failure
from llmops.gateway.shadow.sampling import shadow_offer
from routing import upstream
from routing.cache.store import CacheHit, CacheRequest, cache_lookup, cache_store
from routing.catalog import ModelEntry
from routing.injection_guard import SecretEchoBlocked, answer_texts, guard_answer, inspect_answer
from routing.models import InjectionGuardAction
from routing.providers.base import REASONING_FIELDS, billed_text, message_text
from routing.providers.prompt_cache import effective_provider_cache
from routing.resilience import BilledFailure, ChainProgress, FallbackResult, RetryPolicy, call_with_fallbacks
from routing.stream_guard import AnswerHoldBack, AnswerTexts

logger = logging.getLogger(__name__)

RETRY_POLICY = RetryPolicy()
# Where a cached answer keeps the stop sequence that ended it: the gateway's note, taken out before the answer is
# shown, which keeps OpenAI's shape.
STOP_SEQUENCE_NOTE = "llmops_stop_sequence"


def _for_model(body: dict, model: ModelEntry) -> dict:
    return {**body, "model": model.upstream_name}


async def call_chain(call: GatewayCall, chain: list[ModelEntry], attempt, *, estimate: Estimate) -> FallbackResult:
    """``attempt`` down the chain with retries and fallbacks; the OpenAI error when every model failed. Every attempt
    the provider may bill though it failed (an answer the gateway could not use, a timeout once the request was sent)
    is charged at ``estimate`` of it, the gateway's own count (llmops.gateway.chat.failed_attempts): the one that
    ends the chain on the request's row, the others on rows of their own (every one, when the request is cancelled)."""
    billed: list[BilledFailure] = []
    progress = ChainProgress()
    # From here on an attempt may be under way; a cancel tells from ``progress`` whether one was.
    call.upstream_idle = False
    chained = call_with_fallbacks(chain, attempt, policy=RETRY_POLICY, billed_to=billed, progress=progress)
    try:
        result = await (chained if call.chain_watch is None else _watched(call, chained))
    except upstream.UpstreamError as error:
        call.attempts = error.attempts
        call.upstream_ms = error.elapsed_ms
        if error.last_model is not None:
            call.served = error.last_model
        failure = upstream_failure(error)
        earlier = [failed for failed in billed if failed.error is not error]
        await failed_attempts_charge(call, earlier, estimate=estimate)
        if error.billable:
            usage = await failure_usage(call, error, call.served, estimate)
            await finish(call, http_status=failure.status_code, usage=usage, error_code=failure.code)
        raise failure from error
    except asyncio.CancelledError:
        # The client went away. The request's own row, the 499 run_recorded writes, charges one prompt at
        # call.served's prices when an attempt was under way (that attempt's, or the answer it returned, in whole),
        # and nothing between attempts (a backoff, a circuit breaker's read or write) or before the first: then no
        # provider call was left unbilled.
        # The attempts that failed and were billed are charged by a task of their own, each at its own count (an
        # unusable answer with the text it sent).
        if progress.in_flight is not None:
            call.served = progress.in_flight
        else:
            call.upstream_idle = True
            if billed:
                call.served = billed[-1].model
        if progress.attempts:
            call.attempts = progress.attempts
        failed_attempts_charge_detached(call, billed, estimate=estimate)
        raise
    call.served, call.attempts = result.served, result.attempts
    await failed_attempts_charge(call, result.billed_failures, estimate=estimate)
    return result


async def _watched(call: GatewayCall, chained: Coroutine[None, None, FallbackResult]) -> FallbackResult:
    """The chain, its watch told when it starts and when it has ended (however it ended), before any of it is
    charged."""
    try:
        await call.chain_watch.started(call)
    except BaseException:
        chained.close()  # never started: no attempt was made
        raise
    try:
        return await chained
    finally:
        await call.chain_watch.ended(call)


async def _call_chain(call: GatewayCall, plan: ChatPlan, attempt) -> FallbackResult:
    async def estimate(model: ModelEntry, completion_text: str) -> Usage:
        return await estimated_usage(plan.body, completion_text, model)

    return await call_chain(call, plan.chain, attempt, estimate=estimate)


async def complete_chat(call: GatewayCall, plan: ChatPlan) -> HttpResponse:
    async def attempt(model: ModelEntry) -> tuple[upstream.UpstreamReply, Usage]:
        """The reply and what it costs; a reply whose usage is not believable is the model's failure."""
        reply = await upstream.chat_completion(
            model.provider,
            _for_model(plan.body, model),
            provider_cache=effective_provider_cache(plan.provider_cache, prices=model.prices),
        )
        prompt_tokens = call.prompt_tokens_after_compression or 0
        usage = await reply_usage(reply, body=plan.body, model=model, prompt_tokens=prompt_tokens)
        # The answer that ends the chain: billed whole from here on, even if the client leaves before its row.
        call.answer_usage, call.service_tier = usage, upstream.served_tier(reply.body)
        return reply, usage

    reply, usage = (await _call_chain(call, plan, attempt)).value
    call.upstream_ms = reply.elapsed_ms
    call.stop_sequence = reply.stop_sequence
    try:
        verdict = guard_answer(reply.body, action=plan.guard_action, known_secrets=_provider_secrets(plan))
    except SecretEchoBlocked as blocked:
        call.injection_flagged = True
        await finish(call, http_status=blocked.status, usage=usage, error_code=blocked.code)
        raise refusal_error(blocked) from blocked
    call.injection_flagged |= verdict.flagged
    await finish(call, http_status=200, usage=usage, answer=reply.body)
    if not verdict.flagged:
        keep_answer(call, plan.cache, reply.body)
    if call.evaluation is not None:
        shadow_offer(call, body=plan.body, answer=reply.body)
    response = HttpResponse(reply.raw, content_type="application/json")
    for name, value in call.response_headers().items():
        response[name] = value
    return response


def _provider_secrets(plan: ChatPlan) -> list[str]:
    """Credentials an answer must never echo: those of the providers this request could reach."""
    return [model.provider.api_key for model in plan.chain if model.provider.api_key]


class StreamRelay:
    """Passes the upstream's SSE events to the client as they arrive and records the ledger row at the end.

    The upstream is always asked for a usage chunk; the client sees it only if it asked too. A client that asked gets
    one even from an upstream that sends none: the gateway's own count, which is also what the ledger charges.

    The answer guard (``guard_action``, ``known_secrets``) checks the stream as ``complete_chat`` checks an answer.
    Under none and flag the events go out as they arrive; under flag what they wrote is checked when the stream ends,
    before its row is written. Under block they are held back (routing.stream_guard.AnswerHoldBack) until no secret
    can start in them unseen; a secret ends the stream with ``answer_contains_secret``. An answer the guard flags is
    not cached.

    It is the response's body: Django calls its ``close()`` when the response is closed. A body never iterated (the
    client left while the response's headers waited to go out) is finished there as a client that leaves mid-stream
    is, once whichever way.
    """

    def __init__(
        self,
        call: GatewayCall,
        body: dict,
        stream,
        ceiling: UsageCeiling,
        cache: CacheRequest | None,
        *,
        guard_action: str,
        known_secrets: Sequence[str],
    ):
        self.call = call
        self.body = body
        self.stream = stream
        self.ceiling = ceiling
        self.cache = cache
        self.guard_action = guard_action
        self.known_secrets = known_secrets
        self.client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.usage: Usage | None = None
        self.content_parts: list[str] = []
        self.refusal_parts: list[str] = []
        # The reasoning written before the answer, by the field that carried it (REASONING_FIELDS), kept as sent.
        self.reasoning_parts: dict[str, list[str]] = {}
        # Everything the answer wrote, tool and function calls included: what an estimate of its cost counts.
        self.written_parts: list[str] = []
        self.finish_reason: str | None = None
        self.upstream_model = ""
        self.chunk_id = ""
        self.chunk_created: int | None = None
        # Streamed tool calls and several choices are not assembled into a cacheable answer.
        self.cacheable = cache is not None
        self.answer_texts = AnswerTexts() if guard_action == InjectionGuardAction.FLAG else None
        self.hold_back = AnswerHoldBack(known_secrets) if guard_action == InjectionGuardAction.BLOCK else None
        self.answer_flagged = False
        # Whether ``events`` or ``close`` took the stream on: the one that did finishes it.
        self.taken = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.events()

    def close(self) -> None:
        """The response is closed. A body that was iterated has finished the stream itself; one never iterated holds
        the upstream stream open and the request unrecorded: closed and recorded as a client that left, on a task of
        its own (the handler's may be cancelled)."""
        if self.taken:
            return
        self.taken = True
        run_in_background(self._abandoned())

    async def _abandoned(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            if not self.call.finished:
                await self._record_disconnected()

    async def events(self) -> AsyncIterator[bytes]:
        if self.taken:
            return
        self.taken = True
        try:
            async for event in self.stream.events():
                data = event[6:] if event.startswith("data: ") else None
                if data == "[DONE]":
                    if self.hold_back is not None and (held := _sse_events(self.hold_back.finish())):
                        yield held
                    usage_sent = self.usage is not None
                    await self._record(http_status=200)
                    self._keep_answer()
                    if self.call.evaluation is not None:
                        shadow_offer(self.call, body=self.body, answer="".join(self.content_parts))
                    if self.client_wants_usage and not usage_sent:
                        yield b"data: " + orjson.dumps(self._usage_chunk()) + b"\n\n"
                    yield f": x-llmops-cost-usd={self.call.cost_usd}\n\ndata: [DONE]\n\n".encode()
                    return
                chunk = None
                if data is not None and (chunk := self._take_checked(data)) is None:
                    continue
                if sendable := self._guarded(event, chunk):
                    yield sendable
            raise upstream.UpstreamStreamTruncated(
                f"provider {self.stream.provider.name} ended the stream before [DONE]",
                elapsed_ms=self.stream.elapsed_ms(),
            )
        except SecretEchoBlocked as blocked:
            yield await self._withhold(blocked)
        except upstream.UpstreamError as error:
            yield await self._fail(upstream_failure(error))
        except Exception:
            # A fault of the gateway's own: the stream still ends with an error event, and the request is recorded.
            logger.exception("stream relay failed for %s", self.call.request_id)
            yield await self._fail(internal_error())
        finally:
            await self.stream.aclose()
            if not self.call.finished:
                # The client went away before the row was begun (mid-stream, or while the end's usage was counted):
                # charge what was generated until then.
                run_in_background(self._record_disconnected())

    async def _fail(self, failure: GatewayError, *, log_answer: bool = True) -> bytes:
        """Record the request as failed; the error event that ends the stream. Events held back are dropped: the
        stream ended before they could be checked whole."""
        await self._record(http_status=failure.status_code, error_code=failure.code, log_answer=log_answer)
        return b"data: " + orjson.dumps(error_body(failure)) + b"\n\n"

    async def _withhold(self, blocked: SecretEchoBlocked) -> bytes:
        """Under block the answer showed a secret: nothing more of it is sent, and it is not logged (as a complete
        answer the guard blocks is not). The provider bills what it generated, which the request is charged."""
        self.answer_flagged = self.call.injection_flagged = True
        return await self._fail(refusal_error(blocked), log_answer=False)

    def _guarded(self, event: str, chunk: dict | None) -> bytes:
        """What goes out now: the event as it came, or under block the events the hold-back lets go."""
        if self.hold_back is not None:
            return _sse_events(self.hold_back.take(event, chunk))
        if self.answer_texts is not None and chunk is not None:
            self.answer_texts.add(chunk)
        return f"{event}\n\n".encode()

    def _flag_echoed_secret(self) -> None:
        """Under flag, before the row is written: whether what the stream sent echoes a secret."""
        if self.answer_texts is None:
            return
        verdict = inspect_answer(self.answer_texts.texts(), action=self.guard_action, known_secrets=self.known_secrets)
        self.answer_flagged = verdict.flagged
        self.call.injection_flagged |= verdict.flagged

    def _take_checked(self, data: str) -> dict | None:
        try:
            return self._take(data)
        except upstream.MalformedAnswer as problem:
            elapsed_ms = self.stream.elapsed_ms()
            raise upstream.invalid_response(self.stream.provider, problem, elapsed_ms=elapsed_ms) from problem

    def _take(self, data: str) -> dict | None:
        """Note what the chunk tells about usage and content; return it if the client should see it. Raises
        MalformedAnswer for a chunk that is not a chat.completion.chunk or whose usage is not believable."""
        chunk = upstream.checked_chunk(data)
        self.upstream_model = chunk.get("model") or self.upstream_model
        self.chunk_id = chunk.get("id") or self.chunk_id
        self.chunk_created = chunk.get("created") or self.chunk_created
        self.call.service_tier = upstream.served_tier(chunk) or self.call.service_tier
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call") or choice.get("index", 0) != 0:
                self.cacheable = False
            content = delta.get("content")
            if content:
                self.content_parts.append(content)
            refusal = delta.get("refusal")
            if refusal:
                self.refusal_parts.append(refusal)
            for field in REASONING_FIELDS:
                thought = delta.get(field)
                if thought and isinstance(thought, str):
                    self.reasoning_parts.setdefault(field, []).append(thought)
            self.written_parts.append(billed_text(delta))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.call.stop_sequence = upstream.named_stop_sequence(choice) or self.stream.stop_sequence
        if chunk.get("usage") is not None:
            self.usage = self.ceiling.check(Usage.from_provider(chunk["usage"]))
            return chunk if self.client_wants_usage or chunk.get("choices") else None
        return chunk

    async def _settled_usage(self) -> Usage:
        """What the stream is charged: the provider's usage, else the gateway's count of what was sent and received
        (kept, so the cached answer carries the same figures). A stream cut before its usage came keeps the prompt's
        counts its provider reported so far (Anthropic's at the start: cache reads and writes at their prices)."""
        if self.usage is None:
            estimate = await estimated_usage(self.body, "".join(self.written_parts), self.call.served)
            self.usage = self._with_reported_prompt(estimate)
        return self.usage

    def _with_reported_prompt(self, estimate: Usage) -> Usage:
        """The estimate with the prompt, cached and cache-write tokens the stream reported before it ended, when it
        reported a believable prompt (``partial_usage``: only Anthropic's reports any before its end)."""
        try:
            reported = self.stream.partial_usage()
            if not reported or not reported["prompt_tokens"]:
                return estimate
            prompt = Usage.from_provider(reported)
            return self.ceiling.check(
                replace(
                    estimate,
                    prompt_tokens=prompt.prompt_tokens,
                    cached_tokens=prompt.cached_tokens,
                    cache_write_tokens=prompt.cache_write_tokens,
                )
            )
        except upstream.MalformedAnswer:
            return estimate

    async def _record_disconnected(self) -> None:
        """The client went away mid-stream: charge what was generated until then."""
        self._flag_echoed_secret()
        usage = await self._settled_usage()
        await finish(self.call, http_status=499, usage=usage, error_code="client_disconnected")

    async def _record(self, *, http_status: int, error_code: str = "", log_answer: bool = True) -> None:
        self.call.upstream_ms = self.stream.elapsed_ms()
        self._flag_echoed_secret()
        answer = {"content": "".join(self.content_parts)} if self.content_parts and log_answer else None
        usage = await self._settled_usage()
        await finish(self.call, http_status=http_status, usage=usage, error_code=error_code, answer=answer)

    def _keep_answer(self) -> None:
        """A stream that ended with [DONE] and a finish reason is complete: cache it as the answer it assembled,
        unless the answer guard flagged it."""
        if not self.cacheable or self.finish_reason is None or self.usage is None or self.answer_flagged:
            return
        usage = self.usage
        answer = {
            "id": f"chatcmpl-{self.call.request_id}",
            "object": "chat.completion",
            "created": int(self.call.created_at.timestamp()),
            "model": self.upstream_model,
            "choices": [
                {
                    "index": 0,
                    "message": self._message(),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": _usage_fields(usage),
        }
        keep_answer(self.call, self.cache, answer)

    def _message(self) -> dict:
        """The assembled message, as OpenAI answers one: a refusal's content is null. Its reasoning is kept under the
        field (or fields) the stream sent it in, as the provider's whole answer has it."""
        content, refusal = "".join(self.content_parts), "".join(self.refusal_parts) or None
        message = {"role": "assistant", "content": None if refusal and not content else content, "refusal": refusal}
        for field, parts in self.reasoning_parts.items():
            message[field] = "".join(parts)
        return message

    def _usage_chunk(self) -> dict:
        """OpenAI's last chunk of a stream asked for usage (no choices), for the usage the stream was charged."""
        return {
            "id": self.chunk_id or f"chatcmpl-{self.call.request_id}",
            "object": "chat.completion.chunk",
            "created": self.chunk_created or int(self.call.created_at.timestamp()),
            "model": self.upstream_model,
            "choices": [],
            "usage": _usage_fields(self.usage),
        }


def _sse_events(events: list[str]) -> bytes:
    return b"".join(f"{event}\n\n".encode() for event in events)


def _usage_fields(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens},
    }


async def stream_chat(call: GatewayCall, plan: ChatPlan) -> StreamingHttpResponse:
    body = plan.body
    stream_options = {**(body.get("stream_options") or {}), "include_usage": True}

    def open_stream(model: ModelEntry):
        body_for_model = {**_for_model(body, model), "stream_options": stream_options}
        provider_cache = effective_provider_cache(plan.provider_cache, prices=model.prices)
        return upstream.open_chat_stream(model.provider, body_for_model, provider_cache=provider_cache)

    result = await _call_chain(call, plan, open_stream)
    stream = result.value
    call.upstream_ms = stream.elapsed_ms()
    ceiling = UsageCeiling.of(result.served, body=body, prompt_tokens=call.prompt_tokens_after_compression or 0)
    relay = StreamRelay(
        call, body, stream, ceiling, plan.cache, guard_action=plan.guard_action, known_secrets=_provider_secrets(plan)
    )
    return _event_stream_response(call, relay)


def _event_stream_response(call: GatewayCall, events: AsyncIterable[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in call.response_headers().items():
        response[name] = value
    return response


def keep_answer(call: GatewayCall, cache: CacheRequest | None, answer: dict) -> None:
    """Cache an answer only if the model the key names served it (not a fallback or a budget downgrade), with the
    stop sequence that ended it noted beside it (STOP_SEQUENCE_NOTE). The write is queued: the response does not
    wait for it. A chat answer the answer guard flags is never passed here."""
    if cache is None or call.served is None or call.served.name != cache.served_model:
        return
    if call.stop_sequence is not None:
        answer = {**answer, STOP_SEQUENCE_NOTE: call.stop_sequence}
    try:
        cache_store(cache, answer=answer)
    except Exception:
        logger.warning("cache: answer not stored for %s", call.request_id, exc_info=True)


async def cache_hit(
    call: GatewayCall, cache: CacheRequest | None, *, servable: Callable[[CacheHit], bool] | None = None
) -> CacheHit | None:
    """The cache's answer to the request, if it has one, with the request's cache status set (bypass when it may not
    read the cache, miss, or the kind of hit). A lookup that fails, or a hit `servable` refuses, is a miss."""
    if cache is None or not cache.control.read:
        call.cache_status = CacheStatus.BYPASS
        return None
    try:
        hit = await cache_lookup(cache)
    except Exception:
        logger.warning("cache: lookup failed for %s; treated as a miss", call.request_id, exc_info=True)
        hit = None
    if hit is not None and servable is not None and not servable(hit):
        hit = None
    if hit is None:
        call.cache_status = CacheStatus.MISS
        return None
    call.cache_status = CacheStatus.HIT_EXACT if hit.kind == "exact" else CacheStatus.HIT_SEMANTIC
    call.cache_similarity = hit.similarity
    call.upstream_ms = 0
    return hit


async def answer_from_cache(call: GatewayCall, plan: ChatPlan) -> HttpResponse | StreamingHttpResponse | None:
    """The stored answer when the cache has one: no reservation, no upstream call, a ledger row costing 0 that
    records what the miss would have cost. None on a miss (or when the request may not read the cache)."""

    def guarded(hit: CacheHit) -> bool:
        """The answer guard at the tenant's action now, as an answer fresh from upstream meets it (the entry may come
        from a stream, or from before a stricter action): a hit it would block is a miss, so the request goes upstream
        and gets what it would have got uncached."""
        verdict = inspect_answer(
            answer_texts(hit.answer), action=plan.guard_action, known_secrets=_provider_secrets(plan)
        )
        if verdict.blocked:
            logger.info("cache: a hit for %s is withheld by the answer guard; treated as a miss", call.request_id)
            return False
        call.injection_flagged |= verdict.flagged
        return True

    hit = await cache_hit(call, plan.cache, servable=guarded)
    if hit is None:
        return None
    call.cache_saved_usage = await _stored_usage(hit, plan.body, call.served)
    answer = {**hit.answer, "id": f"chatcmpl-{call.request_id}", "created": int(call.created_at.timestamp())}
    noted = answer.pop(STOP_SEQUENCE_NOTE, None)
    call.stop_sequence = noted if isinstance(noted, str) else None
    # The payload log keeps the answer the client gets, as it does an answer from upstream.
    await finish(call, http_status=200, answer=answer)
    if call.evaluation is not None:
        shadow_offer(call, body=plan.body, answer=hit.answer)
    if call.is_stream:
        return _event_stream_response(call, _replay_events(call, plan.body, answer))
    response = HttpResponse(orjson.dumps(answer), content_type="application/json")
    for name, value in call.response_headers().items():
        response[name] = value
    return response


async def _stored_usage(hit: CacheHit, body: dict, model: ModelEntry) -> Usage:
    usage = hit.answer.get("usage")
    if isinstance(usage, dict):
        return Usage.from_provider(usage)
    return await estimated_usage(body, upstream.answer_text(hit.answer), model)


REPLAY_PIECE_CHARS = 64


def _replayed_text(value) -> str:
    return value if isinstance(value, str) else ""


async def _replay_events(call: GatewayCall, body: dict, answer: dict) -> AsyncIterator[bytes]:
    """A cached answer as the SSE chunks an upstream would have sent, the usage chunk if the client asked."""
    base = {key: answer.get(key) for key in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"

    def event(choices: list, **extra) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

    for choice in answer["choices"]:
        index, message = choice.get("index", 0), choice["message"]
        yield event([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        # Reasoning comes first, as a live stream sends it. Content given as parts is replayed as its text: a delta's
        # content is a string.
        for field, text in (
            ("reasoning_content", _replayed_text(message.get("reasoning_content"))),
            ("reasoning", _replayed_text(message.get("reasoning"))),
            ("content", message_text(message.get("content"))),
            ("refusal", message.get("refusal") or ""),
        ):
            for start in range(0, len(text), REPLAY_PIECE_CHARS):
                piece = text[start : start + REPLAY_PIECE_CHARS]
                yield event([{"index": index, "delta": {field: piece}, "finish_reason": None}])
        if message.get("tool_calls"):
            tool_calls = [{"index": i, **tool_call} for i, tool_call in enumerate(message["tool_calls"])]
            yield event([{"index": index, "delta": {"tool_calls": tool_calls}, "finish_reason": None}])
        if message.get("function_call"):
            # The legacy tool call, whole in one delta as tool calls are.
            yield event([{"index": index, "delta": {"function_call": message["function_call"]}, "finish_reason": None}])
        yield event([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}])
    if (body.get("stream_options") or {}).get("include_usage"):
        # An answer stored without the provider's usage replays the gateway's count of it, as the live stream did.
        usage = answer.get("usage")
        yield event([], usage=usage if isinstance(usage, dict) else _usage_fields(call.cache_saved_usage))
    yield f": x-llmops-cost-usd={call.cost_usd}\n\ndata: [DONE]\n\n".encode()
