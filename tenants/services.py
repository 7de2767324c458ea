from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from tenants.keys import generate_key
from tenants.models import ApiKey, Membership, Role, Team, Tenant


@transaction.atomic
def tenant_create(*, slug: str, name: str = "", team_slugs: list[str] | None = None) -> Tenant:
    if Tenant.objects.filter(slug=slug).exists():
        raise ValidationError(f"a tenant with slug '{slug}' already exists")
    tenant = Tenant(slug=slug, name=name or slug)
    tenant.full_clean()
    tenant.save()
    for team_slug in team_slugs or []:
        team_create(tenant=tenant, slug=team_slug)
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
    membership, _ = Membership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
    return membership
