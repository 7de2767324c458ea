"""Tenant scoping that fails closed.

Every tenant's own rows (the tenant itself, and every model that belongs to one directly or through a parent row)
are read through a `TenantScopedManager`, the model's default manager. Its querysets are built as usual, but
reading, counting, updating or deleting rows raises `UnscopedQueryError` until the queryset says whose rows it means:

- `for_tenant(tenant)`: one tenant's rows (services, tasks and the gateway, handed a tenant or a tenant's key);
- `restrict(user, action)`: the rows of the tenants where the user's role allows the action (tenants.permissions),
  for the admin and the management API;
- `unscoped()`: every tenant's rows, for the few reviewed places that work across tenants (the drainer, jobs over
  all tenants, the gateway's configuration load); each call says why it is safe.

Rows reached from a row already in hand (`tenant.teams.all()`, `budget.channels.all()`, `prefetch_related`) are
scoped by that row. Django's own machinery uses the model's base manager, a plain `Manager` (Django's default when
`Meta.base_manager_name` is unset), so foreign-key access, deletion cascades, `refresh_from_db`, saves and
migrations are never refused.
"""

from contextlib import contextmanager
from contextvars import ContextVar

from django.apps import apps
from django.db import models

from tenants.permissions import ROLES_ALLOWED, Action

SCOPE_METHODS = "for_tenant(), restrict() or unscoped()"


class UnscopedQueryError(RuntimeError):
    """A tenant-owned table was read or written without saying whose rows: a bug, never a condition to handle."""


_checking_uniqueness = ContextVar("checking_uniqueness", default=False)


@contextmanager
def _uniqueness_check():
    token = _checking_uniqueness.set(True)
    try:
        yield
    finally:
        _checking_uniqueness.reset(token)


class TenantOwned:
    """Mixed into tenant-owned models that forms validate. A unique field or constraint holds across the whole table
    (a key prefix, a tenant's one policy), so Django's uniqueness checks ask about every tenant's rows; they learn
    only whether a clash exists (`exists()`), never a row."""

    def validate_unique(self, exclude=None):
        with _uniqueness_check():
            super().validate_unique(exclude)

    def validate_constraints(self, exclude=None):
        with _uniqueness_check():
            super().validate_constraints(exclude)


class TenantScopedQuerySet(models.QuerySet):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tenant_scoped = False

    # Scoping -----------------------------------------------------------------------------------------------------

    def for_tenant(self, tenant):
        """One tenant's rows; `tenant` is a Tenant or its id."""
        if tenant is None:
            raise UnscopedQueryError(f"{self.model._meta.label}: for_tenant() needs a tenant, not None")
        tenant_id = tenant.pk if isinstance(tenant, models.Model) else tenant
        return self._scoped().filter(**{self._tenant_path(): tenant_id})

    def restrict(self, user, action: Action):
        """The rows of the tenants where `user`'s role allows `action`; every tenant's for a superuser."""
        if not user.is_authenticated:
            return self.none()
        if user.is_superuser:
            return self._scoped()
        membership = apps.get_model("tenants", "Membership")
        tenant_ids = membership.objects.of_user(user).filter(role__in=ROLES_ALLOWED[action]).values("tenant_id")
        return self._scoped().filter(**{f"{self._tenant_path()}__in": tenant_ids})

    def unscoped(self):
        """Every tenant's rows. Only where a reviewer agreed, with a comment saying why it is safe."""
        return self._scoped()

    def none(self):
        # No rows cannot be anyone's rows.
        return super(TenantScopedQuerySet, self._scoped()).none()

    def _scoped(self):
        clone = self._chain()
        clone._tenant_scoped = True
        return clone

    def _tenant_path(self) -> str:
        return self.model._meta.default_manager.tenant_path

    def _is_scoped(self) -> bool:
        # A related manager's rows (tenant.teams, budget.channels, a prefetch) hang off a row already in hand.
        return self._tenant_scoped or self._hints.get("instance") is not None

    def _require_scope(self) -> None:
        if not self._is_scoped():
            raise UnscopedQueryError(
                f"{self.model._meta.label} rows were queried without a tenant scope: call {SCOPE_METHODS} first"
            )

    # Everything that reaches rows checks the scope ---------------------------------------------------------------

    def _clone(self):
        clone = super()._clone()
        clone._tenant_scoped = self._tenant_scoped
        return clone

    def _fetch_all(self):
        if self._result_cache is None:
            self._require_scope()
        super()._fetch_all()

    def iterator(self, chunk_size=None):
        self._require_scope()
        return super().iterator(chunk_size)

    def aiterator(self, chunk_size=2000):
        self._require_scope()
        return super().aiterator(chunk_size)

    def count(self):
        if self._result_cache is None:
            self._require_scope()
        return super().count()

    def exists(self):
        if self._result_cache is None and not _checking_uniqueness.get():
            self._require_scope()
        return super().exists()

    def contains(self, obj):
        self._require_scope()
        return super().contains(obj)

    def aggregate(self, *args, **kwargs):
        self._require_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs):
        self._require_scope()
        return super().update(**kwargs)

    update.alters_data = True

    def _update(self, values):
        self._require_scope()
        return super()._update(values)

    _update.alters_data = True
    _update.queryset_only = False

    def delete(self):
        self._require_scope()
        return super().delete()

    delete.alters_data = True
    delete.queryset_only = True

    def explain(self, *, format=None, **options):
        self._require_scope()
        return super().explain(format=format, **options)

    def resolve_expression(self, *args, **kwargs):
        # Used inside another query (`pk__in=queryset`, a subquery): its rows still decide what the outer one sees.
        self._require_scope()
        return super().resolve_expression(*args, **kwargs)

    def _combined_scope(self, combined, other, *, either: bool):
        if isinstance(combined, TenantScopedQuerySet):
            other_scoped = not isinstance(other, TenantScopedQuerySet) or other._is_scoped()
            scoped = (self._is_scoped() or other_scoped) if either else (self._is_scoped() and other_scoped)
            combined._tenant_scoped = scoped
        return combined

    def __and__(self, other):
        return self._combined_scope(super().__and__(other), other, either=True)

    def __or__(self, other):
        return self._combined_scope(super().__or__(other), other, either=False)

    def __xor__(self, other):
        return self._combined_scope(super().__xor__(other), other, either=False)

    def _combinator_query(self, combinator, *other_qs, all=False):
        for other in (self, *other_qs):
            if isinstance(other, TenantScopedQuerySet):
                other._require_scope()
        return super()._combinator_query(combinator, *other_qs, all=all)

    def __repr__(self):
        if not self._is_scoped():
            return f"<{type(self).__name__} of {self.model._meta.label}, not scoped to a tenant>"
        return super().__repr__()


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):
    """The default manager of tenant-owned rows. `tenant_path` leads from the model to its tenant ("pk" for the
    tenant itself, "budget__tenant" for a row owned through its budget)."""

    def __init__(self, tenant_path: str = "tenant"):
        super().__init__()
        self.tenant_path = tenant_path


def tenant_id_of(row: models.Model) -> int | None:
    """The id of the tenant a tenant-owned row belongs to, along its manager's `tenant_path`."""
    *parents, last = type(row)._meta.default_manager.tenant_path.split("__")
    for name in parents:
        row = getattr(row, name)
    return row.pk if last == "pk" else getattr(row, f"{last}_id")
