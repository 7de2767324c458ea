"""Lines sent to a provider's own batch endpoint, at its batch discount.

Where LLMOPS_BATCH_DELEGATE_PROVIDERS names the provider that would serve a line (after routing and caps, as
planned by the same ``plan_chat`` as a synchronous call) and the provider speaks OpenAI's Batch API, the line is
not called one by one: lines are grouped by provider and upstream model (OpenAI's Batch API takes one model per
input file), each group uploaded as a JSONL file, submitted as a provider batch, polled, and its results merged into
this batch; a cancel of the batch is forwarded to its provider batches still running. Each ledger row is priced at
the model's ``batch_price_multiplier`` of the list price, the difference in ``saved_batch_usd``.

Each line is admitted as a live request is before it is submitted: its worst case at the batch price is reserved
against every budget it is held to, its end customer's included. A line a blocking budget cannot hold fails 429
``budget_exceeded``; one over a downgrading budget, or whose counters cannot be reached, is run by the gateway itself,
whose admission decides. The reservation of a line submitted is kept with its provider batch (``holds``) while the
provider runs it, so what is admitted meanwhile is admitted beside it: it is replaced by the line's cost when its
result is merged, in the step after the transaction that records the line and its ledger row (a poll retried finds
the line recorded, and settles nothing again), and released when the line ends unbilled (an error the provider does
not bill, its provider batch given up). A line that goes back to the gateway's own run gives its reservation back.

A provider batch that cannot be polled (no answer, an error status, an answer that cannot be read) is polled again
with backoff while the batch's completion window lasts; the first poll that fails after it gives the provider batch
up (``_abandon``), so a provider that stays down cannot hold the batch open for ever.
"""

import logging
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import orjson
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.budgets.reservations import (
    BudgetExceeded,
    BudgetUnavailable,
    Reservation,
    budget_reserve,
    reservation_settle,
)
from billing.ledger.costs import BATCH_ENDPOINT, Usage
from core.db import database_sync_to_async
from core.jsonl import jsonl_lines, jsonl_row
from llmops.gateway.batches.holds import hold_release, hold_state, line_charge
from llmops.gateway.batches.models import Batch, BatchLine, BatchStatus, LineStatus
from llmops.gateway.batches.selectors import batches_for_workers, lines_for_workers
from llmops.gateway.batches.services import (
    CHAT_ENDPOINT,
    BatchError,
    ClaimedLine,
    batch_usage_record,
    line_headers,
    line_record,
    line_request_id,
    line_worst_case,
    lines_claim,
)
from llmops.gateway.call import GatewayCall, UsageCeiling, estimated_usage
from llmops.gateway.chat.planning import ChatPlan, plan_chat, request_customer
from llmops.gateway.chat.worst_case import OutputBound, budget_refusal, cache_writers, fitting_max_tokens
from llmops.gateway.errors import GatewayError, error_body
from llmops.gateway.snapshot import ConfigSnapshot, config_snapshot
from llmops.metrics import record_request_metrics
from routing.catalog import ModelEntry, ProviderEntry
from routing.max_tokens import with_max_tokens
from routing.media import PromptMedia
from routing.models import Model
from routing.providers.base import MalformedAnswer, answer_text, checked_chat_completion
from routing.providers.kinds import provider_kind
from routing.providers.openai import chat_body_for
from tenants.authentication import KeyPrincipal

logger = logging.getLogger(__name__)

PROVIDER_DONE = ("completed", "failed", "expired", "cancelled")
# A provider batch's status once it has been given up (_abandon): ours, not one a provider reports.
ABANDONED = "abandoned"
CLAIM_ALL = 1_000_000
# What a failed poll can raise: no answer or an error status (httpx), an answer that is not a batch object.
POLL_ERRORS = (httpx.HTTPError, ValueError, KeyError, TypeError)
# The longest wait between polls of a provider batch that keeps failing.
POLL_BACKOFF_MAX_SECONDS = 600
UNREACHABLE = "provider_batch_unreachable"
UNREADABLE = "The provider batch's result for this line cannot be read."


def _db(function):
    return database_sync_to_async(function)


def _delegates(provider: ProviderEntry) -> bool:
    kind = provider_kind(provider.kind)
    return provider.name in settings.LLMOPS_BATCH_DELEGATE_PROVIDERS and kind is not None and kind.batch_endpoint


def _client(provider: ProviderEntry) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
    return httpx.AsyncClient(base_url=provider.base_url, headers=headers, timeout=provider.timeout_seconds)


async def lines_delegate(*, batch: Batch, principal: KeyPrincipal) -> None:
    """Submit the pending lines a delegating provider would serve; poll the provider batches already submitted."""
    if batch.provider_batches:
        await _poll(batch, principal)
        return
    if not settings.LLMOPS_BATCH_DELEGATE_PROVIDERS:
        return
    claimed = await _db(lines_claim)(batch_id=batch.id, limit=CLAIM_ALL)
    snapshot = await config_snapshot.for_tenant(principal.tenant_id)
    # By provider and upstream model: (provider, [(line, upstream body, served model, route, hold)]).
    groups: dict[tuple[str, str], tuple[ProviderEntry, list[tuple[ClaimedLine, dict, str, str, dict | None]]]] = {}
    keep, refused = [], []
    # The reservations of the lines planned for a provider, by line id, given back unless their provider batch is
    # recorded, which keeps them.
    held: dict[int, Reservation] = {}
    # Summaries compressing lines as they are planned: rows of the batch, written with its cost.
    summaries = []
    try:
        for line in claimed:
            request_id = line_request_id(batch_id=batch.id, custom_id=line.custom_id, attempt=line.attempt)
            call = GatewayCall(
                principal=principal, endpoint=BATCH_ENDPOINT, request_id=request_id, linked_events=summaries
            )
            try:
                plan = await plan_chat(snapshot, call, dict(line.body), line_headers(batch.id))
            except GatewayError:
                keep.append(line.id)  # the synchronous path fails it with its ledger row
                continue
            served = plan.chain[0]
            if not _delegates(served.provider):
                keep.append(line.id)
                continue
            reserved_at = timezone.now()
            try:
                reservation = await _admit(snapshot, call, plan, now=reserved_at)
            except GatewayError as refusal:
                refused.append((line, call, refusal))
                continue
            except (BudgetExceeded, BudgetUnavailable):
                keep.append(line.id)  # a budget that downgrades, or counters away: the gateway's admission decides
                continue
            hold = None
            if reservation is not None:
                held[line.id] = reservation
                hold = hold_state(reservation, reserved_at=reserved_at, customer=call.customer)
            upstream_body = chat_body_for(served.provider, {**plan.body, "model": served.upstream_name})
            # One model per provider batch, as OpenAI's Batch API takes one model per input file.
            groups.setdefault((served.provider.name, served.upstream_name), (served.provider, []))[1].append(
                (line, upstream_body, served.name, call.route, hold)
            )
        for line, call, refusal in refused:
            await _refuse(batch.id, line, call, refusal)
        await _db(_release)(batch_id=batch.id, line_ids=keep)
        for (name, model), (provider, entries) in groups.items():
            line_ids = [entry[0].id for entry in entries]
            try:
                state = await _submit(provider, model, batch.id, entries)
            except Exception as exc:
                # Whatever went wrong (an answer of an unexpected shape too), these lines run one by one; the
                # provider batches submitted before this one keep theirs.
                note = "batch %s: provider %s refused the batch of %s (%r); lines run one by one"
                logger.warning(note, batch.id, name, model, exc)
                await _db(_release)(batch_id=batch.id, line_ids=line_ids)
                continue
            # Recorded at once, so a later failure cannot give back what the provider now runs.
            await _db(_mark_delegated)(batch_id=batch.id, key=f"{name}:{model}", state=state, line_ids=line_ids)
            for line_id in line_ids:
                held.pop(line_id, None)
    finally:
        try:
            # Summaries made are spent, whatever failed after them: their rows go in with the batch's cost.
            await _db(batch_usage_record)(batch_id=batch.id, events=summaries)
        finally:
            for reservation in held.values():
                await reservation_settle(reservation, actual=Decimal(0))


async def _admit(snapshot: ConfigSnapshot, call: GatewayCall, plan: ChatPlan, *, now: datetime) -> Reservation | None:
    """Reserve the line's worst case at the batch price against every budget it is held to, its end customer's
    included, as admission reserves a live request's (None: nothing is held, as no budget applies, or only notify
    budgets whose counters cannot be reached). Raises the 429 of a blocking budget that cannot hold it, and
    BudgetExceeded (downgrading budget) or BudgetUnavailable as budget_reserve does."""
    principal, served = call.principal, plan.chain[0]
    budgets = snapshot.budgets.applicable(
        principal.tenant_id, principal.team_id, principal.key_id, served.name, call.customer
    )
    if not budgets:
        return None
    fallback = settings.LLMOPS_RESERVATION_MAX_TOKENS
    bound = OutputBound.of(plan.body, model=served.upstream_name)
    if bound.max_tokens is None and not served.max_output_tokens:
        # As admission does: without it, a model of no known maximum output could answer past the worst case.
        plan.body = with_max_tokens(plan.body, fallback)
        bound = OutputBound(fallback, bound.choices, bound.predicted_tokens)
    prompt_tokens = call.prompt_tokens_after_compression or 0
    worst = line_worst_case(served, plan.body, prompt_tokens=prompt_tokens, provider_cache=plan.provider_cache)
    multiplier = served.batch_price_multiplier
    try:
        reservation = await budget_reserve(
            budgets=budgets, amount=worst * multiplier, request_id=call.request_id, now=now, customer=call.customer
        )
    except BudgetExceeded as exceeded:
        if exceeded.downgrade:
            raise
        media = PromptMedia.of(plan.body["messages"])
        fitting = fitting_max_tokens(
            [served],
            prompt_tokens=prompt_tokens,
            bound=bound,
            fallback=fallback,
            # At the batch price: what is left, in list-price terms.
            available=exceeded.remaining_usd / multiplier if multiplier else exceeded.remaining_usd,
            cache_writers=cache_writers([served], plan.body, provider_cache=plan.provider_cache),
            media=media,
        )
        raise budget_refusal(exceeded, fitting=fitting, choices=bound.choices, has_media=bool(media)) from exceeded
    return reservation if reservation.backend != "none" else None


async def _refuse(batch_id: str, line: ClaimedLine, call: GatewayCall, refusal: GatewayError) -> None:
    """The line fails as a live request its budget refused does, with its ledger row. Not retried: run by the gateway
    itself, it would be held to the same budget, beside the lines sent to the provider, which hold their worst case
    until their results are merged."""
    event = call.usage_event(http_status=refusal.status_code, error_code=refusal.code)
    record_request_metrics(event)
    await _db(line_record)(
        line=line,
        batch_id=batch_id,
        status_code=refusal.status_code,
        response_body=error_body(refusal),
        request_id=call.request_id,
        usage=event,
        retryable=False,
    )


def _release(*, batch_id: str, line_ids: list[int]) -> None:
    lines_for_workers(batch_id=batch_id).filter(pk__in=line_ids, status=LineStatus.RUNNING).update(
        status=LineStatus.PENDING, claimed_at=None
    )


async def _submit(provider: ProviderEntry, model: str, batch_id: str, entries: list) -> dict:
    """Upload the lines of one upstream model and submit them as a provider batch; what the batch keeps of it."""
    content = b"".join(
        jsonl_row({"custom_id": line.custom_id, "method": "POST", "url": CHAT_ENDPOINT, "body": body})
        for line, body, *_ in entries
    )
    async with _client(provider) as client:
        uploaded = await client.post(
            "/files", data={"purpose": "batch"}, files={"file": (f"{batch_id}.jsonl", content, "application/jsonl")}
        )
        uploaded.raise_for_status()
        file_id = uploaded.json()["id"]
        created = await client.post(
            "/batches",
            json={"input_file_id": file_id, "endpoint": CHAT_ENDPOINT, "completion_window": "24h"},
        )
        created.raise_for_status()
        return {
            "provider": provider.name,
            "model": model,
            "batch_id": created.json()["id"],
            "input_file_id": file_id,
            "status": created.json().get("status", "validating"),
            "lines": {
                line.custom_id: {"served": served, "route": route, **({"hold": hold} if hold else {})}
                for line, _, served, route, hold in entries
            },
        }


def _mark_delegated(*, batch_id: str, key: str, state: dict, line_ids: list[int]) -> None:
    with transaction.atomic():
        batch = batches_for_workers().select_for_update().get(pk=batch_id)
        batch.provider_batches = {**batch.provider_batches, key: state}
        batch.save(update_fields=["provider_batches"])
        lines_for_workers(batch_id=batch_id).filter(pk__in=line_ids).update(
            status=LineStatus.DELEGATED, provider=state["provider"]
        )


async def _poll(batch: Batch, principal: KeyPrincipal) -> None:
    """Merge the results of each provider batch that has ended; forward a cancel of the batch to those still running.
    A poll that fails is tried again at a later look, backing off; once the batch's completion window is over, a
    failing poll gives its provider batch up."""
    catalog = (await config_snapshot.for_tenant(principal.tenant_id)).catalog
    now = timezone.now()
    last_chance = now >= batch.expires_at
    for key, state in batch.provider_batches.items():
        if state["status"] in (*PROVIDER_DONE, ABANDONED):
            continue
        # A state kept before provider batches held one model each has no "provider": its key is the provider's name.
        name = state.get("provider", key)
        provider = next((m.provider for m in catalog.models.values() if m.provider.name == name), None)
        if batch.status == BatchStatus.CANCELLING and provider is not None and not state.get("cancel_sent"):
            # Else the provider runs, and bills, every line; what it answered before the cancel is still merged.
            await _cancel(batch.id, name, state, provider)
            await _db(_provider_state_update)(batch_id=batch.id, key=key, changes={"cancel_sent": True})
        if not last_chance and "next_poll_at" in state and now < datetime.fromisoformat(state["next_poll_at"]):
            continue
        failure = "its provider was removed"
        if provider is not None:
            try:
                remote_status, results = await _fetch(provider, state, batch_id=batch.id, name=name)
                failure = ""
            except POLL_ERRORS as exc:
                failure = _poll_failure(exc)
                logger.warning("batch %s: polling provider %s's batch failed: %r", batch.id, name, exc)
        if failure:
            if last_chance:
                await _abandon(batch.id, principal.tenant_id, key, state, provider, failure=failure)
            else:
                await _db(_provider_state_update)(batch_id=batch.id, key=key, changes=_backoff(state, now))
            continue
        if "poll_failures" in state:
            cleared = {"poll_failures": None, "next_poll_at": None}
            await _db(_provider_state_update)(batch_id=batch.id, key=key, changes=cleared)
        if remote_status not in PROVIDER_DONE:
            continue
        await _merge(batch, principal, state, results, remote_status)
        await _db(_provider_state_update)(batch_id=batch.id, key=key, changes={"status": remote_status})


async def _cancel(batch_id: str, name: str, state: dict, provider: ProviderEntry) -> None:
    """Ask the provider to cancel its batch. A refusal or no answer is logged only: the batch is polled as before."""
    try:
        async with _client(provider) as client:
            answer = await client.post(f"/batches/{state['batch_id']}/cancel")
            answer.raise_for_status()
    except httpx.HTTPError as exc:
        logger.warning("batch %s: cancelling provider %s's batch %s failed: %r", batch_id, name, state["batch_id"], exc)


async def _fetch(provider: ProviderEntry, state: dict, *, batch_id: str, name: str) -> tuple[str, list[dict]]:
    """The provider batch's status, and once it has ended, the rows of its output and error files."""
    async with _client(provider) as client:
        answer = await client.get(f"/batches/{state['batch_id']}")
        answer.raise_for_status()
        remote = answer.json()
        status = remote["status"]
        if not isinstance(status, str):
            raise TypeError(f"the batch's status is {status!r}")
        results = []
        if status in PROVIDER_DONE:
            for file_key in ("output_file_id", "error_file_id"):
                if remote.get(file_key):
                    content = await client.get(f"/files/{remote[file_key]}/content")
                    content.raise_for_status()
                    results.extend(_result_rows(content.content, batch_id=batch_id, provider=name))
    return status, results


def _poll_failure(exc: Exception) -> str:
    """What a failed poll met, for the tenant: neither the provider's address nor its own words."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"it answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.HTTPError):
        return "it could not be reached"
    return "its answer could not be read"


def _backoff(state: dict, now: datetime) -> dict:
    """The poll after a failed one is due after LLMOPS_BATCH_POLL_SECONDS, twice as long after each further failure in
    a row, up to POLL_BACKOFF_MAX_SECONDS."""
    failures = state.get("poll_failures", 0) + 1
    delay = min(settings.LLMOPS_BATCH_POLL_SECONDS * 2 ** min(failures - 1, 32), POLL_BACKOFF_MAX_SECONDS)
    return {"poll_failures": failures, "next_poll_at": (now + timedelta(seconds=delay)).isoformat()}


async def _abandon(
    batch_id: str, tenant_id: int, key: str, state: dict, provider: ProviderEntry | None, *, failure: str
) -> None:
    """Give up a provider batch that could not be polled within the completion window: cancelled there if that still
    gets through, so it stops running lines whose answers no one will collect; its lines still out end unrun, giving
    back what they hold, and the batch ends expired (cancelled, if a cancel came first), each saying why."""
    name = state.get("provider", key)
    note = "batch %s: giving up provider %s's batch %s, which could not be polled (%s)"
    logger.error(note, batch_id, name, state["batch_id"], failure)
    if provider is not None:
        await _cancel(batch_id, name, state, provider)
    message = (
        f"The provider's batch endpoint could not be polled before the completion window ended ({failure}): the "
        "requests sent there were not collected, and are not billed."
    )
    holds = await _db(_abandoned)(batch_id=batch_id, key=key, reason=BatchError(UNREACHABLE, message))
    snapshot = await config_snapshot.for_tenant(tenant_id)
    for hold in holds:
        await hold_release(snapshot, tenant_id=tenant_id, state=hold)


def _abandoned(*, batch_id: str, key: str, reason: BatchError) -> list[dict]:
    """The holds of the lines it ended: only this transaction ends them (a line is recorded under the batch's lock)."""
    now = timezone.now()
    with transaction.atomic():
        batch = batches_for_workers().select_for_update().get(pk=batch_id)
        state = batch.provider_batches[key]
        state["status"] = ABANDONED
        # Its own lines: the provider's other batches (other models) are polled on their own.
        out = lines_for_workers(batch_id=batch_id).filter(
            custom_id__in=list(state["lines"]), status=LineStatus.DELEGATED
        )
        ended = list(out.values_list("custom_id", flat=True))
        out.update(status=LineStatus.CANCELLED, error={"code": reason.code, "message": reason.message}, finished_at=now)
        batch.errors = [*(batch.errors or []), reason.data()]
        fields = ["provider_batches", "errors"]
        if batch.status == BatchStatus.IN_PROGRESS:
            # Ended expired by batch_finalize, as batch_expire_if_due ends a batch whose window is over.
            batch.status, batch.finalizing_at, batch.expired_at = BatchStatus.FINALIZING, now, now
            fields += ["status", "finalizing_at", "expired_at"]
        batch.save(update_fields=fields)
    return [state["lines"][custom_id]["hold"] for custom_id in ended if "hold" in state["lines"].get(custom_id, {})]


def _result_rows(content: bytes, *, batch_id: str, provider: str) -> list[dict]:
    """The rows of a provider batch's output or error file. A row that is not a JSON object is left out, with a
    warning: its line is then recorded as the provider batch's failure, and the rest of the file is merged, where
    raising would stop this merge on every later poll."""
    rows = []
    for number, text in enumerate(jsonl_lines(content.decode("utf-8", "replace")), start=1):
        if not text.strip():
            continue
        try:
            row = orjson.loads(text)
        except orjson.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            logger.warning("batch %s: row %d of provider %s's results is not a JSON object", batch_id, number, provider)
    return rows


def _provider_state_update(*, batch_id: str, key: str, changes: dict) -> None:
    """Change what the batch keeps of one provider batch; a change to None removes the field."""
    with transaction.atomic():
        batch = batches_for_workers().select_for_update().get(pk=batch_id)
        state = {**batch.provider_batches[key], **changes}
        batch.provider_batches[key] = {field: value for field, value in state.items() if value is not None}
        batch.save(update_fields=["provider_batches"])


def _multipliers(names: set[str]) -> dict[str, Decimal]:
    return dict(Model.objects.filter(name__in=names).values_list("name", "batch_price_multiplier"))


async def _merge(batch: Batch, principal: KeyPrincipal, state: dict, results: list[dict], remote_status: str) -> None:
    lines = {line.custom_id: line for line in await _db(list)(batch.lines.filter(status=LineStatus.DELEGATED))}
    multipliers = await _db(_multipliers)({info["served"] for info in state["lines"].values()})
    catalog = (await config_snapshot.for_tenant(principal.tenant_id)).catalog
    answered = set()
    for row in results:
        custom_id = row.get("custom_id")
        line = lines.get(custom_id) if isinstance(custom_id, str) else None
        if line is None or line.custom_id not in state["lines"]:
            continue
        answered.add(line.custom_id)
        info = state["lines"][line.custom_id]
        try:
            status_code, body, usage = await _outcome(row, line, catalog.models.get(info["served"]))
        except Exception:
            # Raising would stop this merge on every later poll, and the batch would never finish.
            note = "batch %s: provider %s's result for line %s cannot be read"
            logger.exception(note, batch.id, line.provider, line.custom_id)
            unreadable = GatewayError(UNREADABLE, status=502, code="no_response")
            status_code, body, usage = 502, error_body(unreadable), None
        await _record(batch, principal, line, info, status_code, body, usage, multipliers)
    for custom_id in state["lines"]:
        line = lines.get(custom_id)
        if line is None or custom_id in answered:
            continue
        if remote_status == "completed":
            message = "The provider batch completed without a readable result for this line."
            ended = GatewayError(message, status=502, code="no_response")
        else:
            message = f"The provider batch ended {remote_status}."
            ended = GatewayError(message, status=502, code=f"provider_{remote_status}")
        await _record(batch, principal, line, state["lines"][custom_id], 502, error_body(ended), None, multipliers)


async def _outcome(row: dict, line: BatchLine, served: ModelEntry | None) -> tuple[int, dict, Usage | None]:
    """What a line records of its row of the provider's results: the status, the body, and the usage it is charged.
    An answer is checked as a synchronous one is (its choices, and its usage as a believable count of tokens for the
    request): one that cannot be used fails 502 ``upstream_invalid_response``, and is charged the gateway's own count
    of it, as the synchronous path charges such an answer. So is one that came without usage: the provider billed it
    all the same."""
    response = row["response"] if isinstance(row.get("response"), dict) else {}
    status_code = _line_status(response.get("status_code"))
    body = response.get("body")
    if not isinstance(body, dict) or not body:
        # No answer is a failure whatever status came with it: a transient one, retried while attempts remain.
        status_code = status_code if status_code >= 400 else 502
        message = "The provider batch returned no response for this line."
        error = _provider_error(row.get("error"), status=status_code, message=message, code="no_response")
        return status_code, error, None
    if status_code >= 400:
        message = f"The provider answered {status_code}."
        error = _provider_error(body.get("error"), status=status_code, message=message, code="provider_error")
        return status_code, error, None
    try:
        checked_chat_completion(body)
        usage = Usage.from_provider(body["usage"]) if body.get("usage") is not None else None
        if usage is not None and served is not None:
            usage = UsageCeiling.of(served, body=line.body, prompt_tokens=0).check(usage)
        elif usage is None and served is not None:
            usage = await estimated_usage(line.body, answer_text(body), served)
    except MalformedAnswer as problem:
        message = f"The provider batch answered this line with something the gateway cannot use: {problem}."
        unusable = GatewayError(message, status=502, code="upstream_invalid_response")
        estimate = await estimated_usage(line.body, answer_text(body), served) if served is not None else None
        return 502, error_body(unusable), estimate
    return status_code, body, usage


def _line_status(status) -> int:
    """A provider's HTTP status for a line, or 502 (a transient failure) where it gave none that is one: a row that
    cannot be read must not stop the batch's merge, which every later poll would repeat."""
    return status if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599 else 502


def _provider_error(error, *, status: int, message: str, code: str) -> dict:
    """OpenAI's four-field error body for an error a provider batch reported: its error file's rows and a failed
    line's body may carry ``{code, message}`` only, and clients read ``type`` and ``param`` too. What the provider
    left out is filled as the gateway's own errors are."""
    error = error if isinstance(error, dict) else {}

    def text(name: str) -> str | None:
        value = error.get(name)
        return value if isinstance(value, str) and value else None

    return error_body(
        GatewayError(
            text("message") or message,
            status=status,
            code=text("code") or code,
            param=text("param"),
            error_type=text("type") or "",
        )
    )


async def _record(
    batch, principal, line: BatchLine, info: dict, status_code: int, body: dict, usage: Usage | None, multipliers
) -> None:
    snapshot = await config_snapshot.for_tenant(principal.tenant_id)
    served = snapshot.catalog.models.get(info["served"])
    request_id = line_request_id(batch_id=batch.id, custom_id=line.custom_id, attempt=line.attempt)
    call = GatewayCall(principal=principal, endpoint=BATCH_ENDPOINT, request_id=request_id)
    call.requested_model, call.served, call.route = str(line.body.get("model")), served, info["route"]
    call.tags = [f"batch:{batch.id}"]
    # Valid: plan_chat read it when the line was submitted (a line it refused runs, and fails, one by one).
    call.customer = request_customer({}, line.body.get("user"))
    event = call.usage_event(
        http_status=status_code, usage=usage, error_code="" if status_code < 400 else "provider_batch_error"
    )
    event.batch_discount(multiplier=multipliers.get(info["served"], Decimal("0.5")))
    record_request_metrics(event)
    claimed = ClaimedLine(id=line.pk, custom_id=line.custom_id, body=line.body, attempt=line.attempt)
    recorded = await _db(line_record)(
        line=claimed,
        batch_id=batch.id,
        status_code=status_code,
        response_body=body,
        request_id=request_id,
        usage=event,
        provider=line.provider,
    )
    if not recorded:
        return  # another run recorded the line, and charged it
    # Charged by the run that recorded the line and its ledger row, so once: a poll retried finds the line recorded.
    await line_charge(
        snapshot,
        principal,
        info.get("hold"),
        request_id=request_id,
        served=info["served"],
        customer=call.customer,
        actual=event.cost_usd,
    )
