from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from core.redaction import custom_pattern_errors
from tenants.permissions import Role
from tenants.scoping import TenantOwned, TenantScopedManager, TenantScopedQuerySet
from tenants.time_zones import validate_time_zone


class Tenant(TenantOwned, models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="An IANA time zone name, like Europe/London or UTC: the tenant's days (budget periods, usage, "
        "statements) are counted in it.",
    )
    max_inflight_requests = models.PositiveIntegerField(
        null=True,
        blank=True,
        verbose_name="max requests in flight",
        help_text="Chat completions this tenant may have in flight at once, across every gateway process; over it, "
        "429 tenant_concurrency_limit_exceeded. Empty: the installation default (LLMOPS_TENANT_MAX_INFLIGHT). "
        "0: no limit.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # A tenant's own row is scoped like its other rows: nobody lists the platform's customers by accident.
    objects = TenantScopedManager(tenant_path="pk")

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.slug


class Team(TenantOwned, models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="teams")
    slug = models.SlugField(max_length=64)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["tenant__slug", "slug"]
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="team_slug_unique_per_tenant")]

    def __str__(self):
        return f"{self.tenant.slug}/{self.slug}"


class ApiKey(TenantOwned, models.Model):
    """A gateway key. Only a SHA-256 of the secret is kept; the full key is shown once."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["tenant__slug", "-created_at"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.prefix}… ({self.name or self.team.slug})"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class MembershipQuerySet(TenantScopedQuerySet):
    def of_user(self, user):
        """The user's own memberships, in every tenant: what their permissions are computed from."""
        return self._scoped().filter(user=user)


class Membership(TenantOwned, models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tenant_memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantScopedManager.from_queryset(MembershipQuerySet)()

    class Meta:
        ordering = ["tenant__slug", "user__username"]
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_per_tenant")]

    def __str__(self):
        return f"{self.user} @ {self.tenant.slug} ({self.role})"


def _validate_custom_patterns(value: str) -> None:
    if errors := custom_pattern_errors(value.splitlines()):
        raise ValidationError(errors)


class PayloadLogSettings(TenantOwned, models.Model):
    """Whether a tenant's prompts and answers are kept (redacted) for debugging and review, and for how long."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="payload_log_settings")
    enabled = models.BooleanField(default=False)
    retention_days = models.PositiveSmallIntegerField(
        default=7, validators=[MinValueValidator(1), MaxValueValidator(365)]
    )
    custom_patterns = models.TextField(
        blank=True,
        validators=[_validate_custom_patterns],
        help_text="Extra regular expressions to redact, one per line, replaced by [REDACTED].",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager()

    class Meta:
        verbose_name = "payload logging settings"
        verbose_name_plural = "payload logging settings"

    def __str__(self):
        return f"payload logging of {self.tenant.slug} ({'on' if self.enabled else 'off'})"


class PayloadLog(models.Model):
    """One request's body and answer, stored only redacted, deleted after the tenant's retention."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="payload_logs")
    request_id = models.CharField(max_length=64, db_index=True)
    request = models.JSONField()
    response = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.request_id


class AuditAction(models.TextChoices):
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"


class ImmutableAuditError(Exception):
    pass


class AuditEventQuerySet(TenantScopedQuerySet):
    def update(self, **kwargs):
        raise ImmutableAuditError("audit events cannot be changed")

    def delete(self):
        raise ImmutableAuditError("audit events cannot be deleted")


class AuditEvent(models.Model):
    """Who changed which configuration row, when, and its fields before and after (secrets masked).

    The tenant is kept without a database constraint so a deleted tenant's history, and its deletion, remain.
    """

    tenant = models.ForeignKey(
        Tenant, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    tenant_slug = models.CharField(max_length=64, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_name = models.CharField(max_length=200)
    action = models.CharField(max_length=8, choices=AuditAction.choices)
    object_type = models.CharField(max_length=100, db_index=True)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = TenantScopedManager.from_queryset(AuditEventQuerySet)()

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["tenant", "-at"], name="audit_tenant_at")]

    def __str__(self):
        return f"{self.action} {self.object_type} {self.object_id} by {self.actor_name}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableAuditError("audit events cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableAuditError("audit events cannot be deleted")
