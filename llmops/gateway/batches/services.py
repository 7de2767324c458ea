"""Files and batches: upload, create, validate, claim and record lines, cancel, finalize.

Exactly once: one runner at a time holds a batch's lease (renewed while it runs). A line is claimed by a status
change (pending → running) and recorded by a second one (running → succeeded/failed, only for the attempt that
was claimed), in one transaction with the run's ledger rows (its own, and its summaries' and failed attempts') and the
batch's counters and cost, so the batch's cost is the sum of its ledger rows at every moment. A runner that takes
over a lapsed lease finds the lines its dead predecessor had claimed but never recorded and runs them again with
the same attempt number, so the same ledger request id; nothing of the unrecorded run reached the ledger.

Lock order, where rows are locked: the batch's row, then its lines' rows.
"""

import hashlib
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import IO

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, Q
from django.utils import timezone

from billing.budgets.index import BudgetEntry
from billing.budgets.selectors import budget_status
from billing.ledger.costs import format_cost
from billing.ledger.events import UsageEvent
from billing.ledger.services import usage_record_create
from billing.models import Budget
from core.db import storable, unstorable_part
from core.jsonl import jsonl_lines, jsonl_row
from llmops.gateway.batches.models import (
    BATCH_FINISHED,
    LINE_FINISHED,
    Batch,
    BatchLine,
    BatchStatus,
    File,
    FilePurpose,
    LineStatus,
)
from llmops.gateway.batches.selectors import batches_for_workers, lines_for_workers
from llmops.gateway.batches.storage import file_store
from llmops.gateway.chat.validation import (
    _choice,
    _missing,
    _type_error,
    _value_error,
    validate_chat_request,
    validate_metadata,
    validate_storable,
)
from llmops.gateway.chat.worst_case import body_worst_case
from llmops.gateway.errors import GatewayError, error_body, invalid_request, unstorable_answer_error
from llmops.gateway.snapshot import ConfigSnapshot
from routing.catalog import ModelEntry
from routing.providers.prompt_cache import AUTO as PROVIDER_CACHE_AUTO
from routing.tokens import count_chat_tokens, count_definition_tokens, encoding_name_for
from tenants.authentication import KeyPrincipal

CHAT_ENDPOINT = "/v1/chat/completions"
SUPPORTED_ENDPOINTS = (CHAT_ENDPOINT,)
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENCY_KEY_MAX_LENGTH = 255
CUSTOM_ID_MAX_LENGTH = 512
# The code of a batch stopped because its key may no longer be used, and of its lines never run: authentication's.
KEY_REFUSED = "invalid_api_key"
FILENAME_MAX_LENGTH = 255
# What a multipart upload's body holds beside the file: boundaries, part headers, the purpose field.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


def line_request_id(*, batch_id: str, custom_id: str, attempt: int) -> str:
    """The ledger request id of one run of a line: the same after a worker dies, a new one after a retry."""
    digest = hashlib.sha256(f"{batch_id}\x00{custom_id}\x00{attempt}".encode()).hexdigest()
    return f"req_b{digest[:31]}"


def line_headers(batch_id: str) -> dict[str, str]:
    """The headers a line is planned and run with: its ledger rows, and its summaries', carry ``batch:<id>``."""
    return {"x-llmops-tags": f"batch:{batch_id}"}


def _output_line_id(batch_id: str, custom_id: str) -> str:
    digest = hashlib.sha256(f"{batch_id}\x00{custom_id}".encode()).hexdigest()
    return f"batch_req_{digest[:24]}"


def upload_size_check(*, size: int, request_body: bool = False) -> None:
    """413 ``file_too_large`` for an upload over LLMOPS_FILES_MAX_BYTES, told from its size before it is read: the
    file's, or the whole multipart body's (``request_body``), which holds the file and a little more."""
    limit = settings.LLMOPS_FILES_MAX_BYTES
    if request_body and size > limit + UPLOAD_OVERHEAD_BYTES:
        message = f"The request body is {size} bytes, more than a file within the {limit}-byte limit takes."
        raise GatewayError(message, status=413, code="file_too_large")
    if not request_body and size > limit:
        raise GatewayError(f"The file is {size} bytes; the limit is {limit} bytes.", status=413, code="file_too_large")


def file_create(*, principal: KeyPrincipal, filename: str, purpose: str, upload: IO[bytes], size: int) -> File:
    """Store an uploaded file; ``size`` is what the upload says it holds, checked before anything is read."""
    if purpose != FilePurpose.BATCH:
        raise invalid_request(
            f"Invalid purpose {purpose!r}: only 'batch' files are accepted.", param="purpose", code="invalid_value"
        )
    upload_size_check(size=size)
    # One byte past the limit at most, should the upload hold more than it said.
    content = upload.read(settings.LLMOPS_FILES_MAX_BYTES + 1)
    upload_size_check(size=len(content))
    if not content.strip():
        raise invalid_request("The file is empty.", param="file", code="empty_file")
    validate_storable(filename, param="file")
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_request("The file must be UTF-8 encoded JSONL.", param="file", code="invalid_file") from exc
    return _file_save(principal=principal, filename=filename, purpose=purpose, content=content)


def _file_save(*, principal: KeyPrincipal, filename: str, purpose: str, content: bytes) -> File:
    file = File(
        tenant_id=principal.tenant_id,
        team_id=principal.team_id,
        api_key_id=principal.key_id,
        purpose=purpose,
        filename=filename[:FILENAME_MAX_LENGTH] or "upload.jsonl",
        bytes=len(content),
    )
    file.storage_key = f"{principal.tenant_id}/{file.id}.jsonl"
    file_store().save(file.storage_key, content)
    file.save(force_insert=True)
    return file


def file_content(*, file: File) -> bytes:
    return file_store().read(file.storage_key)


def file_delete(*, file: File) -> None:
    file.delete()
    file_store().delete(file.storage_key)


def batch_create(
    *,
    principal: KeyPrincipal,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict | None,
    idempotency_key: str = "",
) -> tuple[Batch, bool]:
    """The new batch and True; or, for a create repeated with the same Idempotency-Key by the same key of the same
    tenant, the batch the first one made and False (409 if the parameters differ)."""
    _choice("endpoint", endpoint, SUPPORTED_ENDPOINTS)
    _choice("completion_window", completion_window, tuple(COMPLETION_WINDOWS))
    if metadata is not None:
        validate_metadata("metadata", metadata)
        validate_storable(metadata, param="metadata")
    if len(idempotency_key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise invalid_request(
            f"The Idempotency-Key header is longer than {IDEMPOTENCY_KEY_MAX_LENGTH} characters.",
            param="Idempotency-Key",
            code="invalid_value",
        )
    parameters = (input_file_id, endpoint, completion_window, metadata)
    earlier = _batch_by_idempotency_key(principal, idempotency_key, parameters)
    if earlier is not None:
        return earlier, False
    files = File.objects.for_tenant(principal.tenant_id)
    input_file = files.filter(pk=input_file_id).first() if storable(input_file_id) else None
    if input_file is None:
        raise GatewayError(f"No such File object: {input_file_id}", status=404, code="not_found", param="input_file_id")
    if input_file.purpose != FilePurpose.BATCH:
        raise invalid_request("The input file must have purpose 'batch'.", param="input_file_id", code="invalid_value")
    try:
        with transaction.atomic():
            batch = Batch.objects.create(
                tenant_id=principal.tenant_id,
                team_id=principal.team_id,
                api_key_id=principal.key_id,
                input_file=input_file,
                endpoint=endpoint,
                completion_window=completion_window,
                metadata=metadata,
                expires_at=timezone.now() + COMPLETION_WINDOWS[completion_window],
                idempotency_key=idempotency_key,
            )
    except IntegrityError:
        # A concurrent create with the same Idempotency-Key committed first.
        earlier = _batch_by_idempotency_key(principal, idempotency_key, parameters)
        if earlier is None:
            raise
        return earlier, False
    return batch, True


def _batch_by_idempotency_key(principal: KeyPrincipal, idempotency_key: str, parameters: tuple) -> Batch | None:
    if not idempotency_key:
        return None
    earlier = (
        Batch.objects.for_tenant(principal.tenant_id)
        .filter(api_key_id=principal.key_id, idempotency_key=idempotency_key)
        .first()
    )
    if earlier is None:
        return None
    if (earlier.input_file_id, earlier.endpoint, earlier.completion_window, earlier.metadata) != parameters:
        raise GatewayError(
            f"The Idempotency-Key was used for batch {earlier.id}, created with other parameters.",
            status=409,
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    return earlier


def batch_stop(*, batch_id: str, refusal: str) -> bool:
    """Stop a batch whose key may no longer be used (``refusal``: why, as authentication tells it), as a cancel
    does: no line is claimed from now on, lines in flight finish and are billed, and the lines never run carry the
    reason, as does the batch's ``errors`` (batch_finalize). False when it was no longer running."""
    reason = BatchError(KEY_REFUSED, f"{refusal} The batch was stopped: its requests not yet sent were not run.")
    running = batches_for_workers().filter(pk=batch_id, status__in=(BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS))
    return bool(running.update(status=BatchStatus.CANCELLING, cancelling_at=timezone.now(), errors=[reason.data()]))


def batch_cancel(*, batch: Batch) -> Batch:
    with transaction.atomic():
        batch = Batch.objects.for_tenant(batch.tenant_id).select_for_update().get(pk=batch.pk)
        if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            return batch
        if batch.status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
            raise GatewayError(
                f"Cannot cancel a batch with status {batch.status}.", status=409, code="batch_not_cancellable"
            )
        batch.status, batch.cancelling_at = BatchStatus.CANCELLING, timezone.now()
        batch.save(update_fields=["status", "cancelling_at"])
    return batch


@dataclass(frozen=True, slots=True)
class ParsedLine:
    line_number: int
    custom_id: str
    body: dict


@dataclass(frozen=True, slots=True)
class BatchError:
    """Why validation refused a batch: OpenAI's batch error (``errors.data``), and for the error file the custom_id
    of the line it is about, when that line has a string one. ``line`` counts from 1; None for the whole file."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None
    custom_id: str | None = None

    @classmethod
    def of(cls, error: GatewayError, *, line: int, custom_id: str | None = None, param: str | None = None):
        return cls(error.code, error.message, param or error.param, line, custom_id)

    def data(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}

    def error_file_row(self) -> dict:
        error = {"code": self.code, "message": self.message, "param": self.param}
        return {"id": None, "custom_id": self.custom_id, "line": self.line, "response": None, "error": error}


def _field_error(name: str, value, kind: type, expected: str) -> GatewayError | None:
    """A line's field missing or null, or of the wrong JSON type; its value is the caller's to check."""
    if value is None:
        return _missing(name)
    if not isinstance(value, kind):
        return _type_error(name, expected, value)
    return None


def _custom_id_error(custom_id) -> GatewayError | None:
    if (error := _field_error("custom_id", custom_id, str, "a string")) is not None:
        return error
    if not custom_id or len(custom_id) > CUSTOM_ID_MAX_LENGTH:
        return _value_error("custom_id", f"it must be a non-empty string of at most {CUSTOM_ID_MAX_LENGTH} characters.")
    return None


def _request_error(item: dict, endpoint: str) -> GatewayError | None:
    """A line's ``method``, ``url`` and ``body``, in that order, as ``custom_id`` is checked; a string of the wrong
    value keeps OpenAI's batch codes (``invalid_method``, ``mismatched_endpoint``)."""
    method, url = item.get("method"), item.get("url")
    if (error := _field_error("method", method, str, "a string")) is not None:
        return error
    if method != "POST":
        return invalid_request("method must be 'POST'.", param="method", code="invalid_method")
    if (error := _field_error("url", url, str, "a string")) is not None:
        return error
    if url != endpoint:
        message = f"The url {url!r} does not match the batch's endpoint {endpoint}."
        return invalid_request(message, param="url", code="mismatched_endpoint")
    return _field_error("body", item.get("body"), dict, "an object")


def _parse_lines(content: bytes, endpoint: str) -> tuple[list[ParsedLine], list[BatchError]]:
    """Every line checked as OpenAI does at validation; errors name the 1-based line number."""
    parsed, errors, seen = [], [], set()
    # A byte order mark, as some editors and PowerShell write one, is not part of the first line.
    lines = jsonl_lines(content.decode("utf-8-sig"))
    limit = settings.LLMOPS_BATCH_MAX_LINES
    if len(lines) > limit:
        message = f"The file has {len(lines)} lines; at most {limit} are allowed per batch."
        return [], [BatchError("too_many_lines", message, line=limit + 1)]
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors.append(BatchError("invalid_json_line", "This line is not valid JSON.", line=number))
            continue
        if not isinstance(item, dict):
            errors.append(BatchError("invalid_json_line", "Each line must be a JSON object.", line=number))
            continue
        custom_id = item.get("custom_id")
        named = custom_id if isinstance(custom_id, str) else None
        try:
            validate_storable(item)
        except GatewayError as error:
            errors.append(BatchError.of(error, line=number, custom_id=named))
            continue
        if (error := _custom_id_error(custom_id)) is not None:
            errors.append(BatchError.of(error, line=number, custom_id=named))
            continue
        if custom_id in seen:
            message = f"The custom_id {custom_id!r} is used twice."
            errors.append(BatchError("duplicate_custom_id", message, "custom_id", number, custom_id))
            continue
        seen.add(custom_id)
        if (error := _request_error(item, endpoint)) is not None:
            errors.append(BatchError.of(error, line=number, custom_id=custom_id))
            continue
        body = item["body"]
        try:
            validate_chat_request(body)
        except GatewayError as error:
            param = f"body.{error.param or ''}".rstrip(".")
            errors.append(BatchError.of(error, line=number, custom_id=custom_id, param=param))
            continue
        if body.get("stream"):
            errors.append(BatchError("invalid_value", "Batch lines cannot stream.", "body.stream", number, custom_id))
            continue
        parsed.append(ParsedLine(line_number=number, custom_id=custom_id, body=body))
    if not parsed and not errors:
        errors.append(BatchError("empty_file", "The input file has no lines."))
    return parsed, errors


def line_worst_case(
    model: ModelEntry, body: dict, *, prompt_tokens: int, provider_cache: str = PROVIDER_CACHE_AUTO
) -> Decimal:
    """A line's worst case on ``model`` at list price, by admission's formula; ``prompt_tokens`` in its encoding."""
    fallback = settings.LLMOPS_RESERVATION_MAX_TOKENS
    return body_worst_case(model, body, prompt_tokens=prompt_tokens, fallback=fallback, provider_cache=provider_cache)


def _costliest(
    snapshot: ConfigSnapshot, principal: KeyPrincipal, body: dict
) -> tuple[ModelEntry, Decimal, list[BudgetEntry]] | None:
    """The model a line is priced at for the worst case, that worst case (admission's formula) and the enforced
    budgets it counts against: the named model, else (an alias) the allowed model under a budget whose worst case
    for this line is the largest. By list price alone a cheaper model can be the dearer one: a gpt-4o-mini image
    bills 33 times gpt-4o's tokens, and a model with no image rule is reserved at its context window. None when no
    budget applies (nothing is counted then)."""
    allowed = snapshot.catalog.models_for(principal.tenant_id)
    servable = [model for model in allowed if model.name == body["model"]] or allowed
    budgets_of = {
        model.name: [
            entry
            for entry in snapshot.budgets.applicable(
                principal.tenant_id, principal.team_id, principal.key_id, model.name
            )
            if entry.enforced
        ]
        for model in servable
    }
    candidates = [model for model in servable if budgets_of[model.name]]
    tokens_by_encoding: dict[str, int] = {}

    def worst(model: ModelEntry) -> Decimal:
        encoding = encoding_name_for(model.upstream_name)
        if encoding not in tokens_by_encoding:
            # The prompt as the provider bills it: its tool and function definitions and response format too.
            messages = count_chat_tokens(body["messages"], model=model.upstream_name)
            tokens_by_encoding[encoding] = messages + count_definition_tokens(body, model=model.upstream_name)
        # The line's routing rule is not known yet: its prompt may be written to the provider's cache.
        return line_worst_case(model, body, prompt_tokens=tokens_by_encoding[encoding])

    priced = [(worst(model), model.name, model) for model in candidates]
    if not priced:
        return None
    cost, _, model = max(priced)
    return model, cost, budgets_of[model.name]


def _budget_errors(snapshot: ConfigSnapshot, principal: KeyPrincipal, lines: list[ParsedLine]) -> list[BatchError]:
    """The whole batch's worst case, line by line (``_costliest``), against each enforced budget's remainder."""
    worst_by_budget: dict[int, Decimal] = defaultdict(Decimal)
    for line in lines:
        costliest = _costliest(snapshot, principal, line.body)
        if costliest is None:
            continue
        _, cost, budgets = costliest
        for entry in budgets:
            worst_by_budget[entry.budget_id] += cost
    errors = []
    now = timezone.now()
    for budget in Budget.objects.for_tenant(principal.tenant_id).filter(pk__in=worst_by_budget):
        remaining = budget_status(budget=budget, now=now).remaining_usd
        if worst_by_budget[budget.pk] > remaining:
            message = (
                f"The batch could cost up to {format_cost(worst_by_budget[budget.pk])} USD; budget {budget.pk} has "
                f"{format_cost(remaining)} USD left this period."
            )
            errors.append(BatchError("budget_exceeded", message))
    return errors


def batch_validate(*, batch: Batch, snapshot: ConfigSnapshot, principal: KeyPrincipal) -> Batch:
    """validating → in_progress with one BatchLine per request, or → failed with ``errors`` and nothing run."""
    if batch.status != BatchStatus.VALIDATING:
        return batch
    input_file = File.objects.for_tenant(batch.tenant_id).filter(pk=batch.input_file_id).first()
    if input_file is None:
        errors = [BatchError("file_not_found", f"The input file {batch.input_file_id} was deleted.")]
        lines = []
    else:
        lines, errors = _parse_lines(file_content(file=input_file), batch.endpoint)
    if not errors:
        errors = _budget_errors(snapshot, principal, lines)
    with transaction.atomic():
        locked = Batch.objects.for_tenant(batch.tenant_id).select_for_update().get(pk=batch.pk)
        if locked.status != BatchStatus.VALIDATING:
            return locked
        now = timezone.now()
        if errors:
            locked.errors = [error.data() for error in errors]
            locked.status, locked.failed_at = BatchStatus.FAILED, now
            locked.error_file = _errors_file(locked, errors)
            locked.save(update_fields=["errors", "status", "failed_at", "error_file"])
            return locked
        BatchLine.objects.bulk_create(
            BatchLine(batch=locked, custom_id=line.custom_id, line_number=line.line_number, body=line.body)
            for line in lines
        )
        locked.total_count = len(lines)
        locked.status, locked.in_progress_at = BatchStatus.IN_PROGRESS, now
        locked.save(update_fields=["total_count", "status", "in_progress_at"])
        return locked


def _errors_file(batch: Batch, errors: list[BatchError]) -> File:
    return _output_file(batch, "errors", [error.error_file_row() for error in errors])


def _output_file(batch: Batch, kind: str, rows: list[dict]) -> File:
    content = b"".join(jsonl_row(row) for row in rows)
    principal = KeyPrincipal(
        key_id=batch.api_key_id,
        key_prefix="",
        secret_hash="",
        tenant_id=batch.tenant_id,
        tenant_slug="",
        team_id=batch.team_id,
        team_slug="",
        expires_at=None,
        revoked_at=None,
        tenant_active=True,
        team_active=True,
    )
    return _file_save(
        principal=principal, filename=f"{batch.id}_{kind}.jsonl", purpose=FilePurpose.BATCH_OUTPUT, content=content
    )


@dataclass(frozen=True, slots=True)
class ClaimedLine:
    id: int
    custom_id: str
    body: dict
    attempt: int


def batch_lease_acquire(*, batch_id: str) -> str | None:
    """Become the batch's only runner (its owner token, for renewing and releasing the lease), or learn that a live
    one exists (None). Lines a dead runner held go back to pending."""
    now = timezone.now()
    owner = secrets.token_hex(16)
    with transaction.atomic():
        acquired = (
            batches_for_workers()
            .filter(pk=batch_id)
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .update(lease_until=now + timedelta(seconds=settings.LLMOPS_BATCH_LEASE_SECONDS), lease_owner=owner)
        )
        if acquired:
            lines_for_workers(batch_id=batch_id).filter(status=LineStatus.RUNNING).update(
                status=LineStatus.PENDING, claimed_at=None
            )
    return owner if acquired else None


def batch_lease_renew(*, batch_id: str, owner: str) -> bool:
    """Extend the lease ``owner`` holds; False when another runner took it over once it had lapsed."""
    held = batches_for_workers().filter(pk=batch_id, lease_owner=owner)
    return bool(held.update(lease_until=timezone.now() + timedelta(seconds=settings.LLMOPS_BATCH_LEASE_SECONDS)))


def batch_lease_release(*, batch_id: str, owner: str) -> None:
    """Give the lease up, unless another runner has taken it over since: its lease is its own."""
    batches_for_workers().filter(pk=batch_id, lease_owner=owner).update(lease_until=None, lease_owner="")


def batch_recheck_claim(*, batch_id: str) -> bool:
    """Whether this runner should schedule the next look at an unfinished batch (one schedule at a time)."""
    now = timezone.now()
    return bool(
        batches_for_workers()
        .filter(pk=batch_id)
        .exclude(status__in=BATCH_FINISHED)
        .filter(Q(recheck_at__isnull=True) | Q(recheck_at__lte=now))
        .update(recheck_at=now + timedelta(seconds=settings.LLMOPS_BATCH_POLL_SECONDS))
    )


def batches_unfinished() -> list[str]:
    return list(batches_for_workers().exclude(status__in=BATCH_FINISHED).values_list("pk", flat=True))


def _batch_lock(batch_id: str) -> str | None:
    """Lock the batch's row for the transaction (a cancel waits, or is waited for); its status."""
    return batches_for_workers().select_for_update().filter(pk=batch_id).values_list("status", flat=True).first()


def lines_claim(*, batch_id: str, limit: int) -> list[ClaimedLine]:
    """Take up to ``limit`` pending lines of a batch that is still in progress: none once a cancel has committed, nor
    once its ``expires_at`` has passed (a run longer than the completion window stops there; batch_finalize expires
    the batch)."""
    with transaction.atomic():
        # The batch's row locked as _batch_lock does, read with its deadline.
        locked = batches_for_workers().select_for_update().filter(pk=batch_id).values_list("status", "expires_at")
        status, expires_at = locked.first() or (None, None)
        if status != BatchStatus.IN_PROGRESS or expires_at <= timezone.now():
            return []
        lines = list(
            lines_for_workers(batch_id=batch_id)
            .select_for_update(skip_locked=True)
            .filter(status=LineStatus.PENDING)
            .order_by("line_number")[:limit]
        )
        if not lines:
            return []
        lines_for_workers(batch_id=batch_id).filter(pk__in=[line.pk for line in lines]).update(
            status=LineStatus.RUNNING, claimed_at=timezone.now()
        )
    return [ClaimedLine(id=line.pk, custom_id=line.custom_id, body=line.body, attempt=line.attempt) for line in lines]


def line_record(
    *,
    line: ClaimedLine,
    batch_id: str,
    status_code: int,
    response_body: dict,
    request_id: str,
    usage: UsageEvent | None,
    linked: Sequence[UsageEvent] = (),
    provider: str = "",
    retryable: bool = True,
) -> bool:
    """Record one finished run, with its ledger row (``usage``; None for a run that never reached the pipeline's
    end) and those linked to it (``linked``: its compression summaries, its failed attempts the provider may bill),
    and the batch's counters and cost, in one transaction. A transient failure with attempts left sends the line back
    to pending, unless the gateway said no retry can change it (``retryable``). An answer the database could not give
    back as it was sent (a NUL character, a number beyond ±2^63) fails the line 502 ``upstream_answer_unstorable``,
    its ledger rows kept.

    Returns False when the claim was lost (another worker took the line over), and records nothing.
    """
    retry = (
        retryable and status_code in TRANSIENT_STATUSES and line.attempt + 1 < settings.LLMOPS_BATCH_LINE_MAX_ATTEMPTS
    )
    # Decided after the retry, so never retried: the same answer would come back, and be charged, again.
    unstorable = None if retry else unstorable_part(response_body)
    if unstorable is not None:
        error = unstorable_answer_error(*unstorable, holder="the batch", charged_in="the batch's llmops.cost_usd")
        status_code, response_body = error.status_code, error_body(error)
    succeeded = 200 <= status_code < 300
    held = lines_for_workers(batch_id=batch_id).filter(
        pk=line.id, attempt=line.attempt, status__in=(LineStatus.RUNNING, LineStatus.DELEGATED)
    )
    with transaction.atomic():
        _batch_lock(batch_id)
        if retry:
            changed = held.update(status=LineStatus.PENDING, attempt=F("attempt") + 1, claimed_at=None)
            counters = {}
        else:
            changed = held.update(
                status=LineStatus.SUCCEEDED if succeeded else LineStatus.FAILED,
                status_code=status_code,
                response_body=response_body,
                request_id=request_id,
                provider=provider,
                finished_at=timezone.now(),
            )
            counter = "completed_count" if succeeded else "failed_count"
            counters = {counter: F(counter) + 1}
        if not changed:
            return False
        events = [*linked, *([usage] if usage is not None else [])]
        counters.update(_usage_recorded(events))
        if counters:
            batches_for_workers().filter(pk=batch_id).update(**counters)
    return True


def batch_usage_record(*, batch_id: str, events: Sequence[UsageEvent]) -> None:
    """Ledger rows of the batch that belong to no line's run (the summaries compressing lines as they were planned
    for a provider's batch endpoint), written with the batch's cost."""
    if not events:
        return
    with transaction.atomic():
        _batch_lock(batch_id)
        batches_for_workers().filter(pk=batch_id).update(**_usage_recorded(events))


def _usage_recorded(events: Sequence[UsageEvent]) -> dict:
    """Write the ledger rows; the batch's counter updates that add them to its cost."""
    for event in events:
        usage_record_create(event=event)
    if not events:
        return {}
    return {
        "cost_usd": F("cost_usd") + sum(event.cost_usd for event in events),
        "saved_batch_usd": F("saved_batch_usd") + sum(event.saved_batch_usd for event in events),
    }


def batch_expire_if_due(*, batch_id: str) -> bool:
    """A batch past its ``expires_at`` with lines left to run (or still validating) goes to ``finalizing``, as
    OpenAI's does (it has no ``expiring`` status, and ``cancelling`` is a client's cancel): lines in flight finish,
    the unrun ones fail ``batch_expired`` and the batch ends ``expired`` (batch_finalize). ``expired_at`` marks it."""
    now = timezone.now()
    unrun = lines_for_workers(batch_id=batch_id).filter(status__in=(LineStatus.PENDING, LineStatus.RUNNING))
    due = batches_for_workers().filter(pk=batch_id, expires_at__lte=now)
    return bool(
        due.filter(Q(status=BatchStatus.VALIDATING) | Q(Exists(unrun), status=BatchStatus.IN_PROGRESS)).update(
            status=BatchStatus.FINALIZING, finalizing_at=now, expired_at=now
        )
    )


def batch_finalize(*, batch_id: str) -> Batch | None:
    """Write the output and error files once no line is left to run; None while lines are still out."""
    with transaction.atomic():
        batch = batches_for_workers().select_for_update().get(pk=batch_id)
        if batch.status in BATCH_FINISHED:
            return batch
        if batch_expire_if_due(batch_id=batch_id):
            batch.refresh_from_db()
        expired = batch.expired_at is not None
        stopping = batch.status == BatchStatus.CANCELLING or expired
        lines = batch.lines.all()
        if stopping:
            # Nothing more starts; what finished is kept. Lines at a provider's batch endpoint are waited for.
            lines.filter(status__in=(LineStatus.PENDING, LineStatus.RUNNING)).update(
                status=LineStatus.CANCELLED, finished_at=timezone.now()
            )
        if lines.exclude(status__in=LINE_FINISHED).exists():
            return None
        outcome = BatchStatus.EXPIRED if expired else BatchStatus.CANCELLED if stopping else BatchStatus.COMPLETED
        # A cancelled batch goes from cancelling to cancelled, its finalizing_at left null, as OpenAI's does.
        if outcome != BatchStatus.CANCELLED and batch.status != BatchStatus.FINALIZING:
            batch.status, batch.finalizing_at = BatchStatus.FINALIZING, timezone.now()
            batch.save(update_fields=["status", "finalizing_at"])
        refusal = next((error for error in batch.errors or [] if error["code"] == KEY_REFUSED), None)
        if expired:
            unrun = {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window expired.",
            }
        elif refusal is not None:
            # Stopped by batch_stop: the reason it gave.
            unrun = {"code": refusal["code"], "message": refusal["message"]}
        else:
            unrun = {
                "code": "batch_cancelled",
                "message": "This request was not executed because the batch was cancelled.",
            }
        outputs, failures = [], []
        for line in batch.lines.order_by("line_number"):
            row = {"id": _output_line_id(batch.id, line.custom_id), "custom_id": line.custom_id}
            if line.status == LineStatus.CANCELLED:
                # A line given up on at a provider's batch endpoint carries its own reason.
                failures.append({**row, "response": None, "error": line.error or unrun})
                continue
            row["response"] = {
                "status_code": line.status_code,
                "request_id": line.request_id,
                "body": line.response_body,
            }
            row["error"] = None
            (outputs if line.status == LineStatus.SUCCEEDED else failures).append(row)
        batch.output_file = _output_file(batch, "output", outputs) if outputs else None
        batch.error_file = _output_file(batch, "errors", failures) if failures else None
        batch.status = outcome
        setattr(batch, f"{outcome}_at", batch.expired_at or timezone.now())
        batch.save()
    return batch
