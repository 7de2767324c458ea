"""A key, team or tenant with a batch or job still running cannot be deleted.

Deleting one cascades to its batches and jobs, and rows of work not yet ended are more than history: a batch's lines
sent to a provider's batch endpoint hold budget reservations (kept in Redis, released only when their answers are
merged), and its provider batches run, and are billed, at the provider; a running job's ledger row is on its way.
Deleting those rows would leave the reservations held for good and the provider's work unbilled here. So the
deletion is refused with Django's `ProtectedError` naming that work, whatever asks for it (the admin, a shell, a
queryset, a tenant's cascade to its teams and keys); finished batches and jobs, and jobs still queued (which hold
nothing, and which a worker finding their row gone does not run), go with their owner as before. Revoking a key (or
disabling its team or tenant) is how to stop the work: its batches end `cancelled` and its jobs fail, after which the
key can be deleted.

A `pre_delete` receiver rather than `on_delete=PROTECT`, because only unfinished rows protect their owner. It runs
inside the deletion's transaction: a caller that catches the refusal inside an atomic block of its own wraps the
deletion in `transaction.atomic()` to go on using the connection. The admin asks `work_in_flight` before deleting, so
it lists the work on its confirmation page and never gets this far. The apps whose work protects its owner say so
(`owners_protected_by`, from their `ready()`): tenants stays below them and knows none of their statuses.
"""

from collections.abc import Iterable

from django.db import models
from django.db.models.signals import pre_delete

from tenants.models import ApiKey, Team, Tenant
from tenants.scoping import tenant_id_of

# Each model of work that belongs to a key, team and tenant (a ``tenant``, ``team`` and ``api_key`` of its own), with
# the statuses in which it no longer protects them. Every other status, one added later included, protects them.
_protecting_work: dict[type[models.Model], tuple[str, ...]] = {}
# The field by which the work names each kind of owner.
OWNER_FIELDS = {Tenant: "tenant", Team: "team", ApiKey: "api_key"}
# How many rows of each kind the refusal's message names; the error's `protected_objects` holds them all.
NAMED_IN_MESSAGE = 10


def owners_protected_by(work: type[models.Model], *, unless_status_in: Iterable[str]) -> None:
    """Rows of ``work`` protect their key, team and tenant from deletion, but for those in these statuses."""
    _protecting_work[work] = tuple(unless_status_in)


def work_in_flight(*, owners: Iterable[models.Model]) -> list[models.Model]:
    """The work that protects these keys, teams or tenants, oldest first, each once."""
    found = {}
    for owner in owners:
        field = OWNER_FIELDS.get(owner._meta.concrete_model)
        if field is None:
            continue
        for work, ended in _protecting_work.items():
            rows = work.objects.for_tenant(tenant_id_of(owner)).filter(**{field: owner.pk}).exclude(status__in=ended)
            found.update({(work, row.pk): row for row in rows.only("id", "status", "created_at")})
    return sorted(found.values(), key=lambda row: (row.created_at, row.pk))


def work_label(row: models.Model) -> str:
    """How the refusal names a row of work: `batch batch_… (in_progress)`."""
    return f"{row._meta.verbose_name} {row.pk} ({row.status})"


def _owners_asked(instance: models.Model, origin) -> list[models.Model]:
    """What the deletion was asked of, when that is keys, teams or tenants (a tenant whose key blocks it, a queryset
    of keys), so the refusal names all their work; else the row at hand."""
    owner_models = tuple(OWNER_FIELDS)
    if isinstance(origin, owner_models):
        return [origin]
    if isinstance(origin, models.QuerySet) and issubclass(origin.model, owner_models):
        return list(origin)
    return [instance]


def _first_few(names: list[str]) -> str:
    shown = ", ".join(names[:NAMED_IN_MESSAGE])
    return shown if len(names) <= NAMED_IN_MESSAGE else f"{shown} and {len(names) - NAMED_IN_MESSAGE} more"


def _refuse_deletion_with_work_in_flight(sender, instance, origin=None, **kwargs) -> None:
    if not work_in_flight(owners=[instance]):
        return
    owners = _owners_asked(instance, origin)
    blocking = work_in_flight(owners=owners)
    asked = _first_few([f"{owner._meta.verbose_name} '{owner}'" for owner in owners])
    named = _first_few([work_label(row) for row in blocking])
    raise models.ProtectedError(
        f"Cannot delete {asked} while its batches and jobs are not finished: {named}. Cancel the batches, or stop the "
        "work by revoking its key or disabling its team or tenant, and delete once it has ended.",
        blocking,
    )


def deletion_guard_connect() -> None:
    for owner_model in OWNER_FIELDS:
        pre_delete.connect(
            _refuse_deletion_with_work_in_flight,
            sender=owner_model,
            dispatch_uid=f"work_in_flight_guard_{owner_model._meta.model_name}",
        )
