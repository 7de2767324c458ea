"""Admin for tenants, scoped by membership.

A superuser sees everything. A staff user sees only the tenants they are a member of, and does there what their
role allows (tenants.permissions): owners and admins edit, finance and viewer members only look. The roles decide
this, not Django's per-model permissions, so a membership is all a staff user needs, and a staff user without one
sees no tenant data at all. Every queryset goes through `restrict(user, action)`, so a row of another tenant
answers exactly like a missing one.
"""

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.http import HttpRequest, HttpResponseBadRequest
from django.utils import timezone

from core.db import storable
from tenants.deletion import work_in_flight, work_label
from tenants.models import ApiKey, AuditEvent, Membership, PayloadLog, PayloadLogSettings, Team, Tenant
from tenants.permissions import Action, TenantAccess
from tenants.scoping import TenantScopedManager, tenant_id_of
from tenants.selectors import tenant_access, users_addable_by
from tenants.services import (
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    membership_set,
    payload_log_settings_set,
    team_create,
    tenant_create,
    tenant_update,
)

ROTATION_OVERLAP = timedelta(hours=24)
MEMBERSHIP_USER_UNKNOWN = "No user with this username that you may add."


def request_access(request: HttpRequest) -> TenantAccess:
    """The user's roles, read once per request (an admin page asks many times). The login page lists apps for
    whoever asks, signed in or not (a locked-out login included): an anonymous user has no role anywhere."""
    access = getattr(request, "_tenant_access", None)
    if access is None:
        access = request._tenant_access = tenant_access(user=request.user)
    return access


def scoped_choices(model: type[models.Model], request: HttpRequest, action: Action) -> models.QuerySet | None:
    """A form's choices of tenant-owned rows: those of the tenants where the user may `action`; None for other
    models (the platform's catalog), whose choices Django makes as usual."""
    manager = model._default_manager
    if not isinstance(manager, TenantScopedManager):
        return None
    choices = manager.restrict(request.user, action)
    return choices.select_related("tenant") if manager.tenant_path == "tenant" else choices


class TenantListFilter(admin.RelatedOnlyFieldListFilter):
    """Filter by the tenants of the rows shown. Django's own asks the Tenant table unscoped, which it refuses."""

    def field_choices(self, field, request, model_admin):
        shown = model_admin.get_queryset(request).values(f"{self.field_path}__pk")
        return [
            (tenant.pk, str(tenant))
            for tenant in Tenant.objects.restrict(request.user, Action.VIEW).filter(pk__in=shown)
        ]


def adopt_saved_row(*, target: models.Model, source: models.Model) -> None:
    """Make the admin's unsaved form instance stand for the row a service saved, for the log entry and redirect."""
    for field in source._meta.concrete_fields:
        setattr(target, field.attname, getattr(source, field.attname))
    target._state.adding = False
    target._state.db = source._state.db


class ServiceCreateAdmin(admin.ModelAdmin):
    """Creates rows through the app's service, whose arguments are `add_fields`; the rest is edited afterwards.

    The base of every model admin here (the tenant-scoped ones and the superusers' catalog), so it also keeps what
    PostgreSQL text cannot hold (NUL) out of the admin's queries, which would fail with a 500.
    """

    add_fields: tuple[str, ...] = ()

    def changelist_view(self, request, extra_context=None):
        if not all(storable(text) for name, values in request.GET.lists() for text in (name, *values)):
            return HttpResponseBadRequest(
                "A filter or search holds the NUL character (\\u0000), which no row holds.",
                content_type="text/plain; charset=utf-8",
            )
        return super().changelist_view(request, extra_context)

    def get_object(self, request, object_id, from_field=None):
        # Its change, history and delete pages answer an id holding NUL as a missing row's.
        return super().get_object(request, object_id, from_field) if storable(object_id) else None

    def get_fields(self, request, obj=None):
        if obj is None and self.add_fields:
            return self.add_fields
        return super().get_fields(request, obj)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return super().get_readonly_fields(request, obj)

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
        else:
            adopt_saved_row(target=obj, source=self.create_with_service(request, form))

    def create_with_service(self, request, form) -> models.Model:
        raise NotImplementedError(f"{type(self).__name__} must create rows through a service")

    def added(self, form) -> dict:
        """The add form's values by field name: the keyword arguments of the service that creates the row."""
        return {name: form.cleaned_data[name] for name in self.add_fields}


class TenantScopedAdmin(ServiceCreateAdmin):
    """Base admin for tenant-owned rows: rows, permissions and form choices follow the user's role in each tenant.

    `view_action` is what a role must allow to see the rows, `edit_action` to add, change or delete them.
    """

    view_action = Action.VIEW
    edit_action = Action.EDIT

    def tenant_id_of(self, obj) -> int | None:
        return tenant_id_of(obj)

    def allows(self, request, action: Action, obj) -> bool:
        return request_access(request).allows(action, self.tenant_id_of(obj))

    def get_queryset(self, request):
        return super().get_queryset(request).restrict(request.user, self.view_action)

    def has_module_permission(self, request):
        return request_access(request).allows_somewhere(self.view_action)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return self.has_module_permission(request)
        return self.allows(request, self.view_action, obj)

    def has_add_permission(self, request):
        return request_access(request).allows_somewhere(self.edit_action)

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return request_access(request).allows_somewhere(self.edit_action)
        return self.allows(request, self.edit_action, obj)

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if (choices := scoped_choices(db_field.related_model, request, self.edit_action)) is not None:
            kwargs["queryset"] = choices
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if (choices := scoped_choices(db_field.related_model, request, self.edit_action)) is not None:
            kwargs["queryset"] = choices
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def ensure_tenant_editable(self, request, obj) -> None:
        # Form choices already leave out other tenants; this catches anything that gets past them.
        if not self.allows(request, self.edit_action, obj):
            raise PermissionDenied

    def save_model(self, request, obj, form, change):
        self.ensure_tenant_editable(request, obj)
        super().save_model(request, obj, form, change)


class TenantScopedInline:
    """Inline rows of a tenant-owned parent: read through `restrict` like the parent's own admin."""

    view_action = Action.VIEW

    def get_queryset(self, request):
        return super().get_queryset(request).restrict(request.user, self.view_action)


class WorkInFlightGuardAdmin:
    """Keys, teams and tenants: one whose batches or jobs have not finished cannot be deleted (tenants.deletion). The
    confirmation page (one row's or the bulk action's) lists that work as what protects it, and refuses the deletion
    as Django does for protected rows."""

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        blocking = work_in_flight(owners=objs)
        if not blocking:
            return deleted, model_count, perms_needed, protected
        if not request.POST.get("post"):  # The page, not its (refused) confirmation, which would keep it for the next.
            messages.error(
                request,
                "Batches and jobs that have not finished protect their key, team and tenant from deletion: cancel the "
                "batches, or stop the work by revoking the key or disabling the team or tenant, and delete once it has "
                "ended.",
            )
        # Django's page shows only missing permissions when both apply (here always: batches and jobs are read-only),
        # and the work in flight is what to act on. The deletion is refused either way.
        return deleted, model_count, set(), [*(work_label(row) for row in blocking), *protected]


@admin.register(Tenant)
class TenantAdmin(WorkInFlightGuardAdmin, TenantScopedAdmin):
    list_display = ("slug", "name", "time_zone", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("slug", "name")
    add_fields = ("slug", "name")
    fields = ("slug", "name", "time_zone", "is_active", "max_inflight_requests", "created_at")
    readonly_fields = ("slug", "created_at")
    # Set by the platform (superusers), not by the tenant's owners and admins: whether the tenant may use the gateway
    # at all (a tenant switched off for non-payment must not switch itself on), and its cap on requests in flight,
    # which protects the other tenants.
    platform_fields = ("is_active", "max_inflight_requests")

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        return readonly if request.user.is_superuser else (*readonly, *self.platform_fields)

    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
            return
        # The form leaves the platform's fields out for everyone else; this catches anything that gets past it.
        if not request.user.is_superuser:
            stored = Tenant.objects.for_tenant(obj).values(*self.platform_fields).get()
            if any(getattr(obj, name) != value for name, value in stored.items()):
                raise PermissionDenied
        self.ensure_tenant_editable(request, obj)
        tenant_update(tenant=obj)

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def create_with_service(self, request, form) -> Tenant:
        return tenant_create(**self.added(form))


@admin.register(Team)
class TeamAdmin(WorkInFlightGuardAdmin, TenantScopedAdmin):
    list_display = ("slug", "name", "tenant", "is_active", "created_at")
    list_filter = (("tenant", TenantListFilter), "is_active")
    list_select_related = ("tenant",)
    search_fields = ("slug", "name")
    add_fields = ("tenant", "slug", "name")
    fields = ("tenant", "slug", "name", "is_active", "created_at")
    # Keys and usage hang off a team within its tenant, where its slug is unique: both stay as created.
    readonly_fields = ("tenant", "slug", "created_at")

    def create_with_service(self, request, form) -> Team:
        return team_create(**self.added(form))


class ApiKeyForm(forms.ModelForm):
    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        # api_key_create refuses this too; checking here makes it a form error instead of a 500.
        if self.instance._state.adding and expires_at is not None and expires_at <= timezone.now():
            raise ValidationError("A new key's expiry must be in the future.")
        return expires_at


@admin.register(ApiKey)
class ApiKeyAdmin(WorkInFlightGuardAdmin, TenantScopedAdmin):
    form = ApiKeyForm
    list_display = ("prefix", "tenant", "team", "name", "created_at", "expires_at", "revoked_at")
    list_filter = (("tenant", TenantListFilter), ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("tenant", "team__tenant")
    search_fields = ("prefix", "name")
    actions = ("revoke_keys", "rotate_keys")
    add_fields = ("team", "name", "expires_at")
    fields = ("prefix", "tenant", "team", "name", "created_at", "expires_at", "revoked_at")
    readonly_fields = ("prefix", "tenant", "team", "created_at", "revoked_at")

    def tenant_id_of(self, obj) -> int | None:
        # A new key has no tenant yet; it takes its team's.
        return obj.tenant_id if obj.tenant_id is not None else obj.team.tenant_id

    def create_with_service(self, request, form) -> ApiKey:
        api_key, full_key = api_key_create(
            team=form.cleaned_data["team"], name=form.cleaned_data["name"], expires_at=form.cleaned_data["expires_at"]
        )
        messages.success(
            request, f"New API key: {full_key} — copy it now; it is not stored and will not be shown again."
        )
        return api_key

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        api_keys = list(queryset)
        # Changelist rows include tenants the user only views; one of those in the selection refuses it all.
        if not all(self.has_change_permission(request, api_key) for api_key in api_keys):
            raise PermissionDenied
        for api_key in api_keys:
            api_key_revoke(api_key=api_key)
            self.log_change(request, api_key, "Revoked.")
        self.message_user(request, f"Revoked {len(api_keys)} key(s).", messages.SUCCESS)

    @admin.action(
        description=f"Rotate selected keys (old keys keep working for {ROTATION_OVERLAP})", permissions=["change"]
    )
    def rotate_keys(self, request, queryset):
        api_keys = list(queryset.select_related("team__tenant"))
        if not all(self.has_change_permission(request, api_key) for api_key in api_keys):
            raise PermissionDenied
        for api_key in api_keys:
            try:
                successor, full_key = api_key_rotate(api_key=api_key, overlap=ROTATION_OVERLAP)
            except ValidationError as exc:
                self.message_user(request, f"{api_key.prefix}: {'; '.join(exc.messages)}", messages.ERROR)
                continue
            self.log_change(request, api_key, f"Rotated; successor {successor.prefix}.")
            messages.success(
                request,
                f"{api_key.prefix} rotated, new key: {full_key} — copy it now; it will not be shown again. "
                f"The old key stops working at {api_key.expires_at:%Y-%m-%d %H:%M %Z}.",
            )


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    edit_action = Action.MANAGE_MEMBERS
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = (("tenant", TenantListFilter), "role")
    list_select_related = ("tenant", "user")
    search_fields = ("user__username",)
    add_fields = ("tenant", "user", "role")
    fields = ("tenant", "user", "role", "created_at")
    readonly_fields = ("tenant", "user", "created_at")

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "user":
            # Typed, not picked from a list: a list of every account would show one tenant the users of all others.
            # Only users the editor may add (users_addable_by); one error for "no such user" and "not one of yours",
            # so the form tells nobody which usernames exist.
            return forms.ModelChoiceField(
                queryset=users_addable_by(user=request.user),
                to_field_name=get_user_model().USERNAME_FIELD,
                widget=forms.TextInput,
                label="Username",
                help_text="A user who is already a member of one of the tenants you own or administer.",
                error_messages={"invalid_choice": MEMBERSHIP_USER_UNKNOWN},
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def create_with_service(self, request, form) -> Membership:
        return membership_set(
            tenant=form.cleaned_data["tenant"], user=form.cleaned_data["user"], role=form.cleaned_data["role"]
        )


@admin.register(PayloadLogSettings)
class PayloadLogSettingsAdmin(TenantScopedAdmin):
    list_display = ("tenant", "enabled", "retention_days", "updated_at")
    list_filter = ("enabled",)
    list_select_related = ("tenant",)
    add_fields = ("tenant", "enabled", "retention_days", "custom_patterns")
    fields = ("tenant", "enabled", "retention_days", "custom_patterns", "updated_at")
    readonly_fields = ("tenant", "updated_at")

    def create_with_service(self, request, form) -> PayloadLogSettings:
        return payload_log_settings_set(**self.added(form))


class ReadOnlyScopedAdmin(TenantScopedAdmin):
    """Rows only the system writes: members of the tenant look, nobody adds, changes or deletes."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(PayloadLog)
class PayloadLogAdmin(ReadOnlyScopedAdmin):
    """What the tenant's users asked and were told, personal data included where redaction missed it: only the
    tenant's owners and admins read it; its finance and viewer members do not see this page at all."""

    view_action = Action.VIEW_ANSWERS

    list_display = ("request_id", "tenant", "created_at")
    list_filter = (("tenant", TenantListFilter),)
    list_select_related = ("tenant",)
    search_fields = ("request_id",)
    fields = ("tenant", "request_id", "created_at", "request", "response")
    readonly_fields = fields


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyScopedAdmin):
    """The audit log: per tenant for its members; events on platform rows (providers, prices) for superusers."""

    list_display = ("at", "tenant_slug", "actor_name", "action", "object_type", "object_repr")
    list_filter = ("action", "object_type")
    search_fields = ("object_repr", "actor_name", "object_id")
    date_hierarchy = "at"
    fields = (
        "at",
        "tenant_slug",
        "actor_name",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "before",
        "after",
    )
    readonly_fields = fields
