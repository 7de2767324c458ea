"""One chat completion through the whole pipeline, for the /v1 view and for work that runs later (batches, jobs)."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from django.http import HttpResponse

from billing.ledger.costs import Usage
from core.background import run_in_background
from core.cpu import run_sized
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.admission import SummaryAdmission, admit
from llmops.gateway.chat.cache_embeddings import CacheEmbeddingPayer
from llmops.gateway.chat.pipeline import answer_from_cache, complete_chat, stream_chat
from llmops.gateway.chat.planning import plan_chat
from llmops.gateway.chat.recording import finish
from llmops.gateway.chat.validation import validate_chat_request
from llmops.gateway.concurrency import inflight_release_after
from llmops.gateway.errors import as_gateway_error, internal_error
from llmops.gateway.snapshot import ConfigSnapshot
from routing.cache.embedders import embedding_payer


def _cancelled_usage(call: GatewayCall) -> Usage | None:
    """What a request cancelled before its row was written (its client went away) is charged: the answer an upstream
    attempt returned, which the provider bills whole (``call.answer_usage``); else the prompt, as the gateway counted
    it, when an attempt may have been under way; nothing when none was (``call.upstream_idle``: before the chain
    started, or between its attempts)."""
    if call.answer_usage is not None:
        return call.answer_usage
    if call.served is None or call.upstream_idle:
        return None
    return Usage(prompt_tokens=call.prompt_tokens_after_compression or 0, estimated=True)


@dataclass(frozen=True, slots=True)
class ValidatedBody:
    """A chat request's body validated ahead of its pipeline (the /v1 view does it while the caller's configuration
    is read): the body, or the error its validation raised, which the pipeline raises where it would have
    validated, after authentication."""

    body: dict | None = None
    error: Exception | None = None

    @classmethod
    def of(cls, read_body: Callable[[], object]) -> "ValidatedBody":
        try:
            return cls(body=validate_chat_request(read_body()))
        except Exception as error:
            return cls(error=error)

    def result(self) -> dict:
        if self.error is not None:
            raise self.error
        return self.body


def declared_size(headers: Mapping[str, str]) -> int:
    """The body's Content-Length (uvicorn refuses a malformed one, and DRF reads no body without one)."""
    length = headers.get("content-length") or ""
    return int(length) if length.isdigit() else 0


async def run_recorded(call: GatewayCall, steps: Callable[[], Awaitable[HttpResponse]]) -> HttpResponse:
    """The steps of one request (validate, route, cap, answer from the cache or admit, call and record: a /v1
    endpoint's pipeline), with what every endpoint guarantees around them: every failure after authentication leaves
    its ledger row and is raised as the exception it was (``as_gateway_error`` turns it into the OpenAI error; what it
    cannot translate is a 500 ``internal_error``), and a slot for requests in flight taken on the way
    (``call.inflight``) is given back when the request ends."""
    response = None
    try:
        response = await steps()
        return response
    except Exception as exc:
        # Whatever failed, even a fault of the gateway's own, the request is recorded and its reservation settled.
        error = as_gateway_error(exc) or internal_error()
        await finish(call, http_status=error.status_code, error_code=error.code)
        raise
    except asyncio.CancelledError:
        # The client went away before its answer, and the server cancelled this task: the request is still recorded
        # and its reservation settled, by a task of its own that the cancellation does not reach.
        run_in_background(finish(call, http_status=499, usage=_cancelled_usage(call), error_code="client_disconnected"))
        raise
    finally:
        inflight_release_after(call.inflight, response)


async def chat_completion_run(
    call: GatewayCall,
    *,
    snapshot: ConfigSnapshot,
    read_body: Callable[[], object],
    headers: Mapping[str, str],
    limit_concurrency: bool = False,
    validated: ValidatedBody | None = None,
) -> HttpResponse:
    """Validate, route, cap, answer from the cache or admit, call and record, as ``run_recorded`` runs steps.

    ``snapshot`` is the configuration of the caller's tenant, made current for this request
    (``config_snapshot.for_key`` or ``for_tenant``). With ``limit_concurrency`` (live /v1 requests) the request holds
    one of its tenant's slots for requests in flight from admission to its end. ``validated``: the body of
    ``read_body`` already validated.
    """

    async def steps() -> HttpResponse:
        # What the semantic cache embeds for this request is charged to it. Left set for the rest of the task: a
        # streamed answer is stored, and its prompt embedded if the lookup did not, by the same task after this returns.
        embedding_payer.set(CacheEmbeddingPayer(snapshot, call))
        # Parsing and validating a large body is Python work in proportion to it: on the CPU pool.
        body = (
            validated.result()
            if validated is not None
            else await run_sized(declared_size(headers), lambda: validate_chat_request(read_body()))
        )
        call.request_body, call.request_bytes = body, declared_size(headers)
        call.payload_logging = call.principal.tenant_id in snapshot.payload_logging_tenants
        call.evaluation = snapshot.evaluation
        call.requested_model = body["model"]
        call.is_stream = bool(body.get("stream"))
        # A request compressed with a summary is counted against its rate limits, and takes its slot, before the
        # summary is paid for (then kept, whether the cache answers or not); admission counts the rest once.
        early = SummaryAdmission(snapshot, call, limit_concurrency=limit_concurrency)
        plan = await plan_chat(snapshot, call, body, headers, admit_summary=early)
        cached = await answer_from_cache(call, plan)
        if cached is not None:
            return cached
        await admit(snapshot, call, plan, limit_concurrency=limit_concurrency, counted=early.counted)
        return await (stream_chat if call.is_stream else complete_chat)(call, plan)

    return await run_recorded(call, steps)
