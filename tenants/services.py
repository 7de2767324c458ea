from datetime import datetime, timedelta

from celery import current_app
from django.apps import apps
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from tenants.keys import generate_key
from tenants.models import ApiKey, Membership, PayloadLogSettings, Role, Team, Tenant


@transaction.atomic
def tenant_create(*, slug: str, name: str = "", team_slugs: list[str] | None = None) -> Tenant:
    # Unscoped, reviewed: a slug names one tenant on the whole platform; the check answers only whether it is taken.
    if Tenant.objects.unscoped().filter(slug=slug).exists():
        raise ValidationError(f"a tenant with slug '{slug}' already exists")
    tenant = Tenant(slug=slug, name=name or slug)
    tenant.full_clean()
    tenant.save()
    for team_slug in team_slugs or []:
        team_create(tenant=tenant, slug=team_slug)
    return tenant


# Named, not imported: tenants stays below billing.
ROLLUPS_REZONE_TASK = "billing.finance.tasks.usage_rollups_rezone_task"


@transaction.atomic
def tenant_update(*, tenant: Tenant) -> Tenant:
    """Save the changes made to `tenant`.

    Budget counters are keyed by the period as a local date, and versioned by their budget's `updated_at`: a new
    time zone moves every period's window while its key often reads the same, so the tenant's budgets are bumped in
    this transaction and the next admission seeds each counter from the ledger for the window in the new zone.
    The daily rollups, keyed by the local day as well, are rebuilt in the new zone by a task queued on commit.
    """
    stored_zone = Tenant.objects.for_tenant(tenant).select_for_update().values_list("time_zone", flat=True).get()
    tenant.full_clean()
    tenant.save()
    if tenant.time_zone != stored_zone:
        # Named by label, not imported: tenants stays below billing (as in tenants.audit).
        budgets = apps.get_model("billing", "Budget").objects.for_tenant(tenant)
        budgets.update(updated_at=timezone.now())
        # The daily rollups are keyed by the local day too. A signature, unlike send_task, runs in this process where
        # Celery is eager (the embedded default); every Django process has the task (billing's admin imports it).
        # Robust: the save has committed, so a failure to queue or (eager) to run it is logged, not a 500.
        rezone = current_app.signature(ROLLUPS_REZONE_TASK, args=(tenant.pk,))
        transaction.on_commit(rezone.delay, robust=True)
    return tenant


def team_create(*, tenant: Tenant, slug: str, name: str = "") -> Team:
    if Team.objects.for_tenant(tenant).filter(slug=slug).exists():
        raise ValidationError(f"tenant '{tenant.slug}' already has a team '{slug}'")
    team = Team(tenant=tenant, slug=slug, name=name or slug)
    team.full_clean()
    team.save()
    return team


def api_key_create(*, team: Team, name: str = "", expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Create a key for a team. The returned plaintext key is never stored and cannot be shown again."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError("expires_at must be in the future")
    full_key, prefix, secret_hash = generate_key()
    api_key = ApiKey.objects.create(
        tenant=team.tenant, team=team, name=name, prefix=prefix, secret_hash=secret_hash, expires_at=expires_at
    )
    return api_key, full_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def membership_set(*, tenant: Tenant, user: AbstractBaseUser, role: Role) -> Membership:
    membership, _ = Membership.objects.for_tenant(tenant).update_or_create(
        tenant=tenant, user=user, defaults={"role": role}
    )
    return membership


@transaction.atomic
def api_key_rotate(*, api_key: ApiKey, overlap: timedelta, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """A successor key for the same team (expiring at `expires_at`), and the old key expiring after `overlap`,
    so clients can switch over without a failed request.

    The old key's expiry only moves earlier: rotating never extends a key that expires sooner.
    """
    if api_key.revoked_at is not None:
        raise ValidationError("a revoked key cannot be rotated")
    if overlap < timedelta(0):
        raise ValidationError("the overlap cannot be negative")
    now = timezone.now()
    old_expires_at = now + overlap
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise ValidationError("an expired key cannot be rotated")
    successor, full_key = api_key_create(team=api_key.team, name=api_key.name, expires_at=expires_at)
    if api_key.expires_at is None or api_key.expires_at > old_expires_at:
        api_key.expires_at = old_expires_at
        api_key.save(update_fields=["expires_at"])
    return successor, full_key


def payload_log_settings_set(
    *, tenant: Tenant, enabled: bool, retention_days: int = 7, custom_patterns: str = ""
) -> PayloadLogSettings:
    row = PayloadLogSettings.objects.for_tenant(tenant).first() or PayloadLogSettings(tenant=tenant)
    row.enabled, row.retention_days, row.custom_patterns = enabled, retention_days, custom_patterns
    row.full_clean()
    row.save()
    return row
