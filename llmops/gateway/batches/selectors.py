"""Reads of files and batches, always within the caller's tenant: another tenant's id answers like a missing one."""

from django.db.models import QuerySet

from core.db import storable
from llmops.gateway.batches.models import Batch, BatchLine, File
from llmops.gateway.errors import GatewayError


def _not_found(kind: str, object_id: str, *, param: str = "id") -> GatewayError:
    return GatewayError(f"No such {kind} object: {object_id}", status=404, code="not_found", param=param)


def file_get(*, tenant_id: int, file_id: str) -> File:
    file = File.objects.for_tenant(tenant_id).filter(pk=file_id).first() if storable(file_id) else None
    if file is None:
        raise _not_found("File", file_id)
    return file


def batch_get(*, tenant_id: int, batch_id: str) -> Batch:
    batch = Batch.objects.for_tenant(tenant_id).filter(pk=batch_id).first() if storable(batch_id) else None
    if batch is None:
        raise _not_found("Batch", batch_id)
    return batch


def batches_for_workers() -> QuerySet[Batch]:
    """Every tenant's batches, for the workers: the runner, the delegation poller, expiry, the unfinished sweep."""
    # Unscoped, reviewed: workers find batches by ids from their own sweep (batches_unfinished) and task queue, never
    # by an id a client sent, and run each under its own key; clients reach batches through batch_get only.
    return Batch.objects.unscoped()


def lines_for_workers(*, batch_id: str) -> QuerySet[BatchLine]:
    """One batch's lines, for the workers holding its id (batches_for_workers)."""
    # Unscoped, reviewed: the same ids as batches_for_workers, and only that batch's lines.
    return BatchLine.objects.unscoped().filter(batch_id=batch_id)


def _after(queryset: QuerySet, *, after: str | None, ascending: bool) -> QuerySet:
    """Rows past the cursor in the page order (created_at, then id), as OpenAI's ``after`` does."""
    if after is None:
        return queryset
    cursor = queryset.filter(pk=after).values("created_at", "pk").first() if storable(after) else None
    if cursor is None:
        raise _not_found(queryset.model.__name__, after, param="after")
    created_at, pk = cursor["created_at"], cursor["pk"]
    if ascending:
        return queryset.filter(created_at__gte=created_at).exclude(created_at=created_at, pk__lte=pk)
    return queryset.filter(created_at__lte=created_at).exclude(created_at=created_at, pk__gte=pk)


def _page(queryset: QuerySet, *, after: str | None, limit: int, ascending: bool) -> tuple[list, bool]:
    ordering = ["created_at", "pk"] if ascending else ["-created_at", "-pk"]
    rows = list(_after(queryset, after=after, ascending=ascending).order_by(*ordering)[: limit + 1])
    return rows[:limit], len(rows) > limit


def files_page(
    *, tenant_id: int, after: str | None, limit: int, purpose: str | None, ascending: bool
) -> tuple[list[File], bool]:
    files = File.objects.for_tenant(tenant_id)
    if purpose:
        files = files.filter(purpose=purpose) if storable(purpose) else files.none()
    return _page(files, after=after, limit=limit, ascending=ascending)


def batches_page(*, tenant_id: int, after: str | None, limit: int) -> tuple[list[Batch], bool]:
    return _page(Batch.objects.for_tenant(tenant_id), after=after, limit=limit, ascending=False)
