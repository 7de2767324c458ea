from django.contrib.auth import get_user_model
from django.core.validators import slug_re
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from tenants.models import Membership, Tenant
from tenants.permissions import Action, TenantAccess


def tenant_access(*, user) -> TenantAccess:
    """The user's role in each of their tenants (none for an anonymous user)."""
    if not user.is_authenticated:
        return TenantAccess(is_superuser=False, roles={})
    roles = dict(Membership.objects.of_user(user).values_list("tenant_id", "role"))
    return TenantAccess(is_superuser=user.is_superuser, roles=roles)


def users_addable_by(*, user) -> QuerySet:
    """Active users `user` may add to a tenant whose members they manage: anyone for a superuser; for an owner or
    admin, only people already in one of the tenants whose members they manage. Accounts are made by superusers, who
    place a new user in a first tenant; from there its owners and admins can bring the user into their other tenants."""
    users = get_user_model()._default_manager.filter(is_active=True)
    if user.is_superuser:
        return users
    managed = Tenant.objects.restrict(user, Action.MANAGE_MEMBERS)
    return users.filter(tenant_memberships__tenant__in=managed).distinct()


def tenants_active() -> QuerySet[Tenant]:
    """Every active tenant, for the periodic jobs that visit each one (anomalies, rollups, statements)."""
    # Unscoped, reviewed: beat's jobs work on every tenant, each tenant's rows for that tenant only.
    return Tenant.objects.unscoped().filter(is_active=True)


def tenant_by_slug(*, slug: str) -> Tenant | None:
    """The tenant an operator names on the command line (manage.py commands), or None."""
    # Unscoped: management commands are run by the platform's operators, who act on any tenant.
    return Tenant.objects.unscoped().filter(slug=slug).first()


def tenant_named(*, tenants: QuerySet[Tenant], slug: object) -> Tenant:
    """The tenant with this slug among those the caller may see; anything else answers like a missing one (404).

    A value that is not a slug (a NUL byte, a list) names no tenant rather than reaching the database.
    """
    if not isinstance(slug, str) or not slug_re.match(slug):
        raise Http404
    return get_object_or_404(tenants, slug=slug)
