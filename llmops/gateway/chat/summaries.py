"""Compression's summary call, metered like a request: before it is made, the request it is made for is counted
against its request limits and takes its slot for requests in flight, where its caller says so (``admit_summary``),
and the summary's worst case is reserved against the budgets of the key that
sent the request; it is settled with what it cost, and it has a ledger row of its own (kind `compression_summary`)
whose `parent_request_id` is the request it was made for. Work that writes its ledger rows with its result (batch
lines: ``linked_events``) writes the summary's with them.

A summary the budget cannot cover, or a request its rate limits or cap refuse, refuses the request (429) rather than
compress it differently than its rule says; an upstream failure only costs the summary, as before.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from billing.budgets.reservations import BudgetExceeded, BudgetUnavailable, budget_reserve
from billing.ledger.costs import Usage
from billing.models import CacheStatus, UsageKind
from core.background import run_in_background
from llmops.gateway.call import GatewayCall, estimated_usage, reply_usage
from llmops.gateway.chat.failed_attempts import Estimate, failure_usage
from llmops.gateway.chat.recording import finish
from llmops.gateway.chat.worst_case import OutputBound, budget_refusal, chain_worst_case
from llmops.gateway.errors import GatewayError, upstream_failure
from llmops.gateway.snapshot import ConfigSnapshot
from routing import upstream
from routing.catalog import ModelEntry
from routing.compression import Summarizer, SummaryRefused
from routing.providers.base import message_text
from routing.tokens import count_chat_tokens_async

logger = logging.getLogger(__name__)

SUMMARY_INSTRUCTIONS = (
    "Summarise the following conversation turns in a few sentences. Keep names, numbers, decisions "
    "and open questions. Answer with the summary only."
)
SUMMARY_MAX_TOKENS = 300
SUMMARY_ROUTE = "compression-summary"
# What the transcript shows for a part that is not text: its data would only bloat the summary's prompt.
PART_PLACEHOLDERS = {"image_url": "[image]", "input_audio": "[audio]", "file": "[file]"}
# Admits the request before its summary is paid for (admission.SummaryAdmission).
SummaryGate = Callable[[], Awaitable[None]]


def _transcript_line(message: dict) -> str:
    """A dropped turn as the summarising model reads it: its text, its attachments named, its calls written out."""
    content = message.get("content")
    parts = [message_text(content)]
    if isinstance(content, list):
        parts += [
            PART_PLACEHOLDERS[part["type"]]
            for part in content
            if isinstance(part, dict) and part.get("type") in PART_PLACEHOLDERS
        ]
    calls = [call.get("function") for call in message.get("tool_calls") or [] if isinstance(call, dict)]
    calls.append(message.get("function_call"))
    parts += [
        f"[called {call.get('name')} with {call.get('arguments') or '{}'}]" for call in calls if isinstance(call, dict)
    ]
    return f"{message.get('role')}: " + " ".join(part for part in parts if part)


def _summary_body(model: ModelEntry, messages: list[dict]) -> dict:
    transcript = "\n".join(_transcript_line(message) for message in messages)
    return {
        "model": model.upstream_name,
        "messages": [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS},
            {"role": "user", "content": transcript},
        ],
        "max_tokens": SUMMARY_MAX_TOKENS,
        "temperature": 0,
    }


async def _reserve(snapshot: ConfigSnapshot, summary: GatewayCall, prompt_tokens: int) -> None:
    principal, model = summary.principal, summary.served
    budgets = snapshot.budgets.applicable(
        principal.tenant_id, principal.team_id, principal.key_id, model.name, summary.customer
    )
    if not budgets:
        return
    amount = chain_worst_case(
        [model],
        prompt_tokens=prompt_tokens,
        bound=OutputBound(SUMMARY_MAX_TOKENS),
        fallback=settings.LLMOPS_RESERVATION_MAX_TOKENS,
    )
    try:
        summary.reservation = await budget_reserve(
            budgets=budgets, amount=amount, request_id=summary.request_id, now=timezone.now(), customer=summary.customer
        )
    except BudgetExceeded as exceeded:
        context = "Compressing this request needs a summary of the dropped turns, and the budget cannot cover it. "
        raise SummaryRefused(budget_refusal(exceeded, context=context)) from exceeded
    except BudgetUnavailable as unavailable:
        raise SummaryRefused(GatewayError(str(unavailable), status=503, code="budget_unavailable")) from unavailable


async def _finish(call: GatewayCall, summary: GatewayCall, **outcome) -> None:
    """Settle and record the summary; a request that writes its summaries' rows with its own gets the event."""
    await finish(summary, **outcome)
    if summary.ledger_event is not None:
        call.linked_events.append(summary.ledger_event)


async def _cut_short(
    call: GatewayCall, summary: GatewayCall, body: dict, model: ModelEntry, reply: upstream.UpstreamReply | None
) -> None:
    """Record and settle a summary its request's client left: charged the answer when it had come back (the provider
    bills it whole), the gateway's count of it, else the prompt it may have sent."""
    try:
        usage = await estimated_usage(body, upstream.answer_text(reply.body) if reply is not None else "", model)
    except Exception:
        # Recorded and settled all the same, at nothing.
        logger.exception("summary %s cut short: its usage could not be counted", summary.request_id)
        usage = None
    await _finish(call, summary, http_status=499, usage=usage, error_code="client_disconnected")


async def _failed(
    call: GatewayCall, summary: GatewayCall, error: upstream.UpstreamError, model: ModelEntry, estimate: Estimate
) -> None:
    """Record and settle a summary whose upstream call failed: charged as a request's failed attempt is, nothing when
    the provider cannot bill it."""
    failure = upstream_failure(error)
    try:
        usage = await failure_usage(summary, error, model, estimate) if error.billable else None
    except Exception:
        # Recorded and settled all the same, at nothing.
        logger.exception("summary %s failed: its usage could not be counted", summary.request_id)
        usage = None
    await _finish(call, summary, http_status=failure.status_code, usage=usage, error_code=failure.code)


def metered_summarizer(
    snapshot: ConfigSnapshot, call: GatewayCall, admit_summary: SummaryGate | None = None
) -> Summarizer | None:
    """Summaries of dropped turns come from the tenant's default (small) model, charged to the request's key, after
    ``admit_summary`` admitted the request."""
    catalog = snapshot.catalog
    model = catalog.models.get(catalog.access_for(call.principal.tenant_id).default_model or "")
    if model is None:
        return None

    async def summarize(messages: list[dict]) -> str:
        body = _summary_body(model, messages)

        async def estimate(called: ModelEntry, completion_text: str) -> Usage:
            return await estimated_usage(body, completion_text, called)

        prompt_tokens = await count_chat_tokens_async(body["messages"], model=model.upstream_name)
        if admit_summary is not None:
            try:
                await admit_summary()
            except GatewayError as refusal:
                raise SummaryRefused(refusal) from refusal
        summary = GatewayCall(
            principal=call.principal,
            endpoint=call.endpoint,
            requested_model=model.name,
            served=model,
            route=SUMMARY_ROUTE,
            tags=call.tags,
            customer=call.customer,
            kind=UsageKind.COMPRESSION_SUMMARY,
            parent_request_id=call.request_id,
            cache_status=CacheStatus.BYPASS,
            ledger_deferred=call.linked_events is not None,
        )
        await _reserve(snapshot, summary, prompt_tokens)
        summary.attempts = 1
        reply = None
        try:
            reply = await upstream.chat_completion(model.provider, body)
            measured = await reply_usage(reply, body=body, model=model, prompt_tokens=0)
        except upstream.UpstreamError as error:
            summary.upstream_ms = error.elapsed_ms
            # Counted and recorded by a task of its own: a cancel (the client leaving) that lands while the failure's
            # usage is counted or its row written leaves it running, and the reservation is settled all the same.
            await asyncio.shield(run_in_background(_failed(call, summary, error, model, estimate)))
            raise
        except Exception:
            # Whatever failed, the reservation is released and the attempt recorded.
            await _finish(call, summary, http_status=502, error_code=upstream.UpstreamError.code)
            raise
        except asyncio.CancelledError:
            # The client went away: the summary is recorded, charged what it may have cost (as a request cut short
            # is), and its reservation settled, by a task of its own.
            run_in_background(_cut_short(call, summary, body, model, reply))
            raise
        summary.upstream_ms = reply.elapsed_ms
        text = message_text(reply.body["choices"][0]["message"].get("content"))
        await _finish(call, summary, http_status=200, usage=measured)
        call.compression_summary_usd += Decimal(summary.cost_usd or 0)
        return text

    return summarize
