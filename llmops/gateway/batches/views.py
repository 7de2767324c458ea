"""/v1/files and /v1/batches in OpenAI's shapes, so the SDK's ``files`` and ``batches`` calls work unchanged."""

from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial

import orjson
from django.db import transaction
from django.http import HttpResponse
from django.http.multipartparser import MAX_TOTAL_HEADER_SIZE
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, MultiPartParser

from core.db import database_sync_to_async
from llmops.gateway.batches.models import COST_FIELD, Batch, BatchStatus, File
from llmops.gateway.batches.selectors import batch_get, batches_page, file_get, files_page
from llmops.gateway.batches.services import (
    FILENAME_MAX_LENGTH,
    batch_cancel,
    batch_create,
    file_content,
    file_create,
    file_delete,
)
from llmops.gateway.batches.tasks import batch_process_task
from llmops.gateway.chat.validation import _missing, _string
from llmops.gateway.errors import GatewayError, invalid_request
from llmops.gateway.views import GatewayView

IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_PAGE_SIZE = 20
# OpenAI's bounds on a list's `limit`: up to 10,000 files a page, 100 batches.
MAX_FILES_PAGE_SIZE = 10_000
MAX_BATCHES_PAGE_SIZE = 100
# The batch's money fields at their stored precision, whether the batch was just made or read back.
COST_QUANTUM = Decimal(1).scaleb(-COST_FIELD["decimal_places"])


def _json(payload: dict, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")


def _timestamp(value) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _usd(value) -> str:
    return f"{Decimal(value).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN):f}"


def file_object(file: File) -> dict:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _timestamp(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def batch_object(batch: Batch) -> dict:
    errors = {"object": "list", "data": batch.errors} if batch.errors else None
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _timestamp(batch.created_at),
        "in_progress_at": _timestamp(batch.in_progress_at),
        "expires_at": _timestamp(batch.expires_at),
        "finalizing_at": _timestamp(batch.finalizing_at),
        "completed_at": _timestamp(batch.completed_at),
        "failed_at": _timestamp(batch.failed_at),
        "expired_at": _timestamp(batch.expired_at),
        "cancelling_at": _timestamp(batch.cancelling_at),
        "cancelled_at": _timestamp(batch.cancelled_at),
        "request_counts": {
            "total": batch.total_count,
            "completed": batch.completed_count,
            "failed": batch.failed_count,
        },
        "metadata": batch.metadata,
        "llmops": {"cost_usd": _usd(batch.cost_usd), "saved_batch_usd": _usd(batch.saved_batch_usd)},
    }


def _page(rows: list, has_more: bool, shape) -> dict:
    data = [shape(row) for row in rows]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _limit(request, *, high: int) -> int:
    raw = request.query_params.get("limit") or DEFAULT_PAGE_SIZE
    try:
        limit = int(raw)
    except ValueError:
        raise invalid_request(
            f"Invalid limit {raw!r}: expected an integer.", param="limit", code="invalid_value"
        ) from None
    if not 1 <= limit <= high:
        raise invalid_request(f"limit must be between 1 and {high}.", param="limit", code="invalid_value")
    return limit


def _db(function):
    return database_sync_to_async(function)


def _missing_file() -> GatewayError:
    return invalid_request(
        "Missing required parameter: 'file'. Upload it as multipart/form-data, with a 'file' part and a 'purpose' "
        "field.",
        param="file",
        code="missing_required_parameter",
    )


class UploadParser(MultiPartParser):
    """multipart/form-data, whose failures are told as what they are (not as JSON's)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except ParseError as exc:
            reason = str(exc.__context__ or exc.detail)
            if "header size" in reason:
                # Django reads at most this much of a part's headers; a long filename is what goes over it.
                raise invalid_request(
                    f"Invalid value for 'file': the headers of its multipart part are over {MAX_TOTAL_HEADER_SIZE} "
                    f"bytes. Send it with a shorter filename (the first {FILENAME_MAX_LENGTH} characters are kept).",
                    param="file",
                    code="invalid_value",
                ) from exc
            raise invalid_request(
                f"The multipart/form-data body could not be read: {reason}", code="invalid_value"
            ) from exc


class NotAnUpload(BaseParser):
    """Any other body: an upload is multipart/form-data (``OrjsonParser`` would call it bad JSON)."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        raise _missing_file()


class FilesView(GatewayView):
    parser_classes = [UploadParser, NotAnUpload]

    async def get(self, request):
        purpose = request.query_params.get("purpose") or None
        order = request.query_params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise invalid_request("order must be 'asc' or 'desc'.", param="order", code="invalid_value")
        rows, has_more = await _db(files_page)(
            tenant_id=request.user.tenant_id,
            after=request.query_params.get("after") or None,
            limit=_limit(request, high=MAX_FILES_PAGE_SIZE),
            purpose=purpose,
            ascending=order == "asc",
        )
        return _json(_page(rows, has_more, file_object))

    async def post(self, request):
        upload = request.FILES.get("file")
        if upload is None:
            raise _missing_file()
        purpose = request.data.get("purpose")
        if not purpose:
            raise invalid_request(
                "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        file = await _db(file_create)(
            principal=request.user, filename=upload.name or "", purpose=purpose, upload=upload, size=upload.size
        )
        return _json(file_object(file))


class FileDetailView(GatewayView):
    async def get(self, request, file_id: str):
        return _json(file_object(await _db(file_get)(tenant_id=request.user.tenant_id, file_id=file_id)))

    async def delete(self, request, file_id: str):
        file = await _db(file_get)(tenant_id=request.user.tenant_id, file_id=file_id)
        await _db(file_delete)(file=file)
        return _json({"id": file_id, "object": "file", "deleted": True})


class FileContentView(GatewayView):
    def perform_content_negotiation(self, request, force=False):
        # The SDK asks for application/binary; the answer is raw bytes whatever the Accept header says.
        return super().perform_content_negotiation(request, force=True)

    async def get(self, request, file_id: str):
        file = await _db(file_get)(tenant_id=request.user.tenant_id, file_id=file_id)
        return HttpResponse(await _db(file_content)(file=file), content_type="application/octet-stream")


def _enqueue_on_commit(batch: Batch) -> None:
    """Run the batch once the transaction commits. Robust: the batch exists whatever the enqueue does, so its
    request must not fail (a client would retry and create another); beat's resume picks up a missed enqueue.
    In eager mode the batch runs here, before the response (which shows the batch as the request left it)."""
    transaction.on_commit(partial(batch_process_task.delay, batch.id), robust=True)


def _batch_create_and_enqueue(**arguments) -> Batch:
    with transaction.atomic():
        batch, created = batch_create(**arguments)
        if created:
            _enqueue_on_commit(batch)
    return batch


def _batch_cancel_and_enqueue(*, batch: Batch) -> Batch:
    """Stop the batch; a runner finishes it as ``cancelled``: the one running it, or a new one if none is."""
    with transaction.atomic():
        batch = batch_cancel(batch=batch)
        if batch.status == BatchStatus.CANCELLING:
            _enqueue_on_commit(batch)
    return batch


class BatchesView(GatewayView):
    async def get(self, request):
        rows, has_more = await _db(batches_page)(
            tenant_id=request.user.tenant_id,
            after=request.query_params.get("after") or None,
            limit=_limit(request, high=MAX_BATCHES_PAGE_SIZE),
        )
        return _json(_page(rows, has_more, batch_object))

    async def post(self, request):
        body = request.data
        if not isinstance(body, dict):
            raise invalid_request("The request body must be a JSON object.", code="invalid_json")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if body.get(name) is None:
                raise _missing(name)
            _string(name, body[name])
        batch = await _db(_batch_create_and_enqueue)(
            principal=request.user,
            input_file_id=body["input_file_id"],
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER, ""),
        )
        return _json(batch_object(batch))


class BatchDetailView(GatewayView):
    async def get(self, request, batch_id: str):
        return _json(batch_object(await _db(batch_get)(tenant_id=request.user.tenant_id, batch_id=batch_id)))


class BatchCancelView(GatewayView):
    async def post(self, request, batch_id: str):
        batch = await _db(batch_get)(tenant_id=request.user.tenant_id, batch_id=batch_id)
        return _json(batch_object(await _db(_batch_cancel_and_enqueue)(batch=batch)))
