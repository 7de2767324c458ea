"""The audit log: every change to configuration rows, written by model signals in the saving transaction.

Signals rather than calls in each service, so an admin form, a service, a command or a shell all leave a
row. Models are named by label, not imported: tenants stays below routing and billing. The actor comes from
a context variable that the admin/API middleware sets per request, and commands set with `audit_actor`.
QuerySet.update() and bulk operations bypass signals; configuration code saves rows one at a time.
"""

import datetime
import decimal
import hashlib
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django.db import models
from django.db.models.signals import post_delete, post_save, pre_save

from tenants.models import AuditAction, AuditEvent, Tenant

AUDITED_MODELS = frozenset(
    {
        "tenants.tenant",
        "tenants.team",
        "tenants.apikey",
        "tenants.membership",
        "tenants.payloadlogsettings",
        "routing.provider",
        "routing.model",
        "routing.modelprice",
        "routing.tenantmodelaccess",
        "routing.routingpolicy",
        "routing.routingalias",
        "routing.routingrule",
        "routing.routingpolicyversion",
        "billing.budget",
        "billing.alertchannel",
        "billing.ratelimit",
        "billing.evaluationsettings",
        "billing.qualityslo",
    }
)
SECRET_FIELD = re.compile(r"credential_encrypted|secret|hash|password|token|api_key$", re.IGNORECASE)
SYSTEM_ACTOR = "system"
# What mask_secret() gives.
MASKED_SECRET = re.compile(r"\*\*\*[0-9a-f]{8}")


@dataclass(frozen=True, slots=True)
class Actor:
    user: object | None
    name: str


_current_actor: ContextVar[Actor | None] = ContextVar("audit_actor", default=None)


@contextmanager
def audit_actor(*, user=None, name: str = "") -> Iterator[None]:
    """Attribute the changes made inside the block to `user` (a lazy request.user is fine) or to `name`."""
    token = _current_actor.set(Actor(user=user, name=name))
    try:
        yield
    finally:
        _current_actor.reset(token)


def _resolve_actor() -> tuple[object | None, str]:
    actor = _current_actor.get()
    if actor is None:
        return None, SYSTEM_ACTOR
    user = actor.user
    if user is not None and getattr(user, "is_authenticated", False):
        return user, actor.name or user.get_username()
    return None, actor.name or SYSTEM_ACTOR


def mask_secret(value) -> str:
    """A masked secret still shows whether it changed: the same value masks the same way."""
    return "***" + hashlib.sha256(str(value).encode()).hexdigest()[:8]


def is_masked_secret(value) -> bool:
    """Whether ``value`` is what mask_secret() gives, so rows masked already are not masked again."""
    return isinstance(value, str) and MASKED_SECRET.fullmatch(value) is not None


def _json_value(value):
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return value


def _is_ignored(field: models.Field) -> bool:
    return getattr(field, "auto_now", False)


def audit_snapshot(instance: models.Model) -> dict:
    snapshot = {}
    # A model names fields it holds a credential in only for some rows (a Slack channel's URL, not an email address).
    secrets = instance.audit_secret_fields() if hasattr(instance, "audit_secret_fields") else frozenset()
    for field in instance._meta.concrete_fields:
        if _is_ignored(field):
            continue
        value = getattr(instance, field.attname)
        if isinstance(field, models.DecimalField) and isinstance(value, decimal.Decimal):
            # As stored: a form's 60 and the database's 60.00 are no change.
            value = value.quantize(decimal.Decimal(1).scaleb(-field.decimal_places))
        if (SECRET_FIELD.search(field.name) or field.name in secrets) and value not in (None, ""):
            value = mask_secret(value)
        snapshot[field.attname] = _json_value(value)
    return snapshot


def _tenant_ref(owner: models.Model) -> tuple[int, str]:
    try:
        return owner.tenant_id, owner.tenant.slug
    except Tenant.DoesNotExist:
        return owner.tenant_id, ""


def _tenant_of(instance: models.Model) -> tuple[int | None, str]:
    """(id, slug) of the tenant a row belongs to; rows of the platform (providers, prices) have none."""
    if isinstance(instance, Tenant):
        return instance.pk, instance.slug
    if getattr(instance, "tenant_id", None) is not None:
        return _tenant_ref(instance)
    # Rows that hang off a tenant-owned parent (a policy's rules and aliases).
    for field in instance._meta.concrete_fields:
        if field.is_relation and getattr(instance, field.attname, None) is not None:
            parent = getattr(instance, field.name)
            if getattr(parent, "tenant_id", None) is not None:
                return _tenant_ref(parent)
    return None, ""


def _is_audited(sender) -> bool:
    return sender._meta.label_lower in AUDITED_MODELS


def _record(instance: models.Model, *, action: str, before: dict | None, after: dict | None) -> None:
    tenant_id, tenant_slug = _tenant_of(instance)
    user, actor_name = _resolve_actor()
    AuditEvent.objects.create(
        tenant_id=tenant_id,
        tenant_slug=tenant_slug,
        actor=user,
        actor_name=actor_name[:200],
        action=action,
        object_type=instance._meta.label_lower,
        object_id=str(instance.pk),
        object_repr=str(instance)[:200],
        before=before,
        after=after,
    )


def _capture_before(sender, instance, raw=False, **kwargs) -> None:
    if raw or not _is_audited(sender):
        return
    instance._audit_before = None
    if instance.pk is not None and not instance._state.adding:
        # The row being saved, as stored: the plain base manager, as refresh_from_db reads it.
        stored = sender._base_manager.filter(pk=instance.pk).first()
        instance._audit_before = audit_snapshot(stored) if stored is not None else None


def _record_save(sender, instance, created, raw=False, **kwargs) -> None:
    if raw or not _is_audited(sender):
        return
    before = None if created else getattr(instance, "_audit_before", None)
    after = audit_snapshot(instance)
    if before == after:
        return
    if before is not None:
        changed = {name for name in after if before.get(name) != after[name]}
        before = {name: before.get(name) for name in changed}
        after = {name: after[name] for name in changed}
    _record(instance, action=AuditAction.CREATE if created else AuditAction.UPDATE, before=before, after=after)


def _record_delete(sender, instance, **kwargs) -> None:
    if _is_audited(sender):
        _record(instance, action=AuditAction.DELETE, before=audit_snapshot(instance), after=None)


def audit_signals_connect() -> None:
    pre_save.connect(_capture_before, dispatch_uid="audit_capture_before")
    post_save.connect(_record_save, dispatch_uid="audit_record_save")
    post_delete.connect(_record_delete, dispatch_uid="audit_record_delete")
