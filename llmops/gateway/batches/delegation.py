"""Lines sent to a provider's own batch endpoint, at its batch discount.

Where LLMOPS_BATCH_DELEGATE_PROVIDERS names the provider that would serve a line (after routing and caps, as
planned by the same ``plan_chat`` as a synchronous call) and the provider speaks OpenAI's Batch API, the line is
not called one by one: lines are grouped by provider, uploaded as a JSONL file, submitted as a provider batch,
polled, and their results merged into this batch. Each ledger row is priced at the model's
``batch_price_multiplier`` of the list price, the difference in ``saved_batch_usd``; the budget counters are
charged the discounted cost when the result arrives (the whole batch's worst case was checked at validation).
"""

import logging
from decimal import Decimal

import httpx
import orjson
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.budgets.reservations import BudgetHold, Reservation, reservation_settle
from billing.ledger.costs import BATCH_ENDPOINT, Usage
from core.db import database_sync_to_async
from core.jsonl import jsonl_lines, jsonl_row
from core.redis import async_redis
from llmops.gateway.batches.models import Batch, BatchLine, LineStatus
from llmops.gateway.batches.selectors import batches_for_workers, lines_for_workers
from llmops.gateway.batches.services import CHAT_ENDPOINT, ClaimedLine, line_record, line_request_id, lines_claim
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.planning import plan_chat, request_customer
from llmops.gateway.errors import GatewayError, error_body
from llmops.gateway.snapshot import ConfigSnapshot, config_snapshot
from llmops.metrics import record_request_metrics
from routing.catalog import ProviderEntry
from routing.models import Model
from routing.providers.kinds import provider_kind
from routing.providers.openai import chat_body_for
from tenants.authentication import KeyPrincipal

logger = logging.getLogger(__name__)

PROVIDER_DONE = ("completed", "failed", "expired", "cancelled")
CLAIM_ALL = 1_000_000


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
    groups: dict[str, tuple[ProviderEntry, list[tuple[ClaimedLine, dict, str, str]]]] = {}
    keep = []
    for line in claimed:
        call = GatewayCall(principal=principal, endpoint=BATCH_ENDPOINT)
        try:
            plan = await plan_chat(snapshot, call, dict(line.body), {})
        except GatewayError:
            keep.append(line.id)  # the synchronous path fails it with its ledger row
            continue
        served = plan.chain[0]
        if not _delegates(served.provider):
            keep.append(line.id)
            continue
        upstream_body = chat_body_for(served.provider, {**plan.body, "model": served.upstream_name})
        groups.setdefault(served.provider.name, (served.provider, []))[1].append(
            (line, upstream_body, served.name, call.route)
        )
    await _db(_release)(batch_id=batch.id, line_ids=keep)
    submitted = {}
    for name, (provider, entries) in groups.items():
        try:
            submitted[name] = await _submit(provider, batch.id, entries)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            logger.warning("batch %s: provider %s refused the batch (%s); lines run one by one", batch.id, name, exc)
            await _db(_release)(batch_id=batch.id, line_ids=[entry[0].id for entry in entries])
    if submitted:
        await _db(_mark_delegated)(batch_id=batch.id, submitted=submitted, groups=groups)


def _release(*, batch_id: str, line_ids: list[int]) -> None:
    lines_for_workers(batch_id=batch_id).filter(pk__in=line_ids, status=LineStatus.RUNNING).update(
        status=LineStatus.PENDING, claimed_at=None
    )


async def _submit(provider: ProviderEntry, batch_id: str, entries: list) -> dict:
    content = b"".join(
        jsonl_row({"custom_id": line.custom_id, "method": "POST", "url": CHAT_ENDPOINT, "body": body})
        for line, body, _, _ in entries
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
            "batch_id": created.json()["id"],
            "input_file_id": file_id,
            "status": created.json().get("status", "validating"),
            "lines": {line.custom_id: {"served": served, "route": route} for line, _, served, route in entries},
        }


def _mark_delegated(*, batch_id: str, submitted: dict, groups: dict) -> None:
    with transaction.atomic():
        batch = batches_for_workers().select_for_update().get(pk=batch_id)
        batch.provider_batches = {**batch.provider_batches, **submitted}
        batch.save(update_fields=["provider_batches"])
        for name in submitted:
            lines_for_workers(batch_id=batch_id).filter(pk__in=[entry[0].id for entry in groups[name][1]]).update(
                status=LineStatus.DELEGATED, provider=name
            )


async def _poll(batch: Batch, principal: KeyPrincipal) -> None:
    catalog = (await config_snapshot.for_tenant(principal.tenant_id)).catalog
    for name, state in batch.provider_batches.items():
        if state["status"] in PROVIDER_DONE:
            continue
        provider = next((m.provider for m in catalog.models.values() if m.provider.name == name), None)
        if provider is None:
            logger.warning("batch %s: provider %s is gone from the catalog; cannot poll", batch.id, name)
            continue
        async with _client(provider) as client:
            answer = await client.get(f"/batches/{state['batch_id']}")
            answer.raise_for_status()
            remote = answer.json()
            if remote["status"] not in PROVIDER_DONE:
                continue
            results = []
            for file_key in ("output_file_id", "error_file_id"):
                if remote.get(file_key):
                    content = await client.get(f"/files/{remote[file_key]}/content")
                    content.raise_for_status()
                    results.extend(_result_rows(content.content, batch_id=batch.id, provider=name))
        await _merge(batch, principal, state, results, remote["status"])
        await _db(_provider_status_set)(batch_id=batch.id, provider=name, status=remote["status"])


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


def _provider_status_set(*, batch_id: str, provider: str, status: str) -> None:
    with transaction.atomic():
        batch = batches_for_workers().select_for_update().get(pk=batch_id)
        batch.provider_batches[provider]["status"] = status
        batch.save(update_fields=["provider_batches"])


def _multipliers(names: set[str]) -> dict[str, Decimal]:
    return dict(Model.objects.filter(name__in=names).values_list("name", "batch_price_multiplier"))


async def _merge(batch: Batch, principal: KeyPrincipal, state: dict, results: list[dict], remote_status: str) -> None:
    lines = {line.custom_id: line for line in await _db(list)(batch.lines.filter(status=LineStatus.DELEGATED))}
    multipliers = await _db(_multipliers)({info["served"] for info in state["lines"].values()})
    answered = set()
    for row in results:
        custom_id = row.get("custom_id")
        line = lines.get(custom_id) if isinstance(custom_id, str) else None
        if line is None or line.custom_id not in state["lines"]:
            continue
        answered.add(line.custom_id)
        response = row["response"] if isinstance(row.get("response"), dict) else {}
        status_code = _line_status(response.get("status_code"))
        body = response.get("body")
        if not isinstance(body, dict) or not body:
            # No answer is a failure whatever status came with it: a transient one, retried while attempts remain.
            status_code = status_code if status_code >= 400 else 502
            message = "The provider batch returned no response for this line."
            body = _provider_error(row.get("error"), status=status_code, message=message, code="no_response")
        elif status_code >= 400:
            message = f"The provider answered {status_code}."
            body = _provider_error(body.get("error"), status=status_code, message=message, code="provider_error")
        await _record(batch, principal, line, state["lines"][line.custom_id], status_code, body, multipliers)
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
        await _record(batch, principal, line, state["lines"][custom_id], 502, error_body(ended), multipliers)


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


async def _record(batch, principal, line: BatchLine, info: dict, status_code: int, body: dict, multipliers) -> None:
    snapshot = await config_snapshot.for_tenant(principal.tenant_id)
    served = snapshot.catalog.models.get(info["served"])
    request_id = line_request_id(batch_id=batch.id, custom_id=line.custom_id, attempt=line.attempt)
    call = GatewayCall(principal=principal, endpoint=BATCH_ENDPOINT, request_id=request_id)
    call.requested_model, call.served, call.route = str(line.body.get("model")), served, info["route"]
    call.tags = [f"batch:{batch.id}"]
    # Valid: plan_chat read it when the line was submitted (a line it refused runs, and fails, one by one).
    call.customer = request_customer({}, line.body.get("user"))
    usage = Usage.from_provider(body["usage"]) if isinstance(body.get("usage"), dict) else None
    event = call.usage_event(
        http_status=status_code, usage=usage, error_code="" if status_code < 400 else "provider_batch_error"
    )
    event.batch_discount(multiplier=multipliers.get(info["served"], Decimal("0.5")))
    await _charge_budgets(snapshot, principal, info["served"], request_id, event.cost_usd, customer=call.customer)
    record_request_metrics(event)
    claimed = ClaimedLine(id=line.pk, custom_id=line.custom_id, body=line.body, attempt=line.attempt)
    await _db(line_record)(
        line=claimed,
        batch_id=batch.id,
        status_code=status_code,
        response_body=body,
        request_id=request_id,
        usage=event,
        provider=line.provider,
    )


async def _charge_budgets(
    snapshot: ConfigSnapshot,
    principal: KeyPrincipal,
    model_name: str,
    request_id: str,
    amount: Decimal,
    *,
    customer: str = "",
) -> None:
    """Add the spend to the budget counters, as settling a reservation of nothing does."""
    entries = snapshot.budgets.applicable(
        principal.tenant_id, principal.team_id, principal.key_id, model_name, customer
    )
    if not entries:
        return
    now = timezone.now()
    holds = tuple(BudgetHold.of(entry, now=now, customer=customer) for entry in entries)
    backend = "redis" if async_redis() is not None else "database"
    await reservation_settle(Reservation(request_id, 0, holds, backend=backend, remaining_usd=None), actual=amount)
