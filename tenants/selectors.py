from django.contrib.auth import get_user_model
from django.core.validators import slug_re
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from tenants.models import EDITING_ROLES, Membership, Tenant


def tenants_for_user(*, user) -> QuerySet[Tenant]:
    """Tenants a user may see: all for a superuser, otherwise those they are a member of."""
    if user.is_superuser:
        return Tenant.objects.all()
    return Tenant.objects.filter(memberships__user=user)


def tenant_ids_editable_by(*, user) -> set[int]:
    return set(Membership.objects.filter(user=user, role__in=EDITING_ROLES).values_list("tenant_id", flat=True))


def users_addable_by(*, user) -> QuerySet:
    """Active users `user` may add to a tenant they edit: anyone for a superuser; for an owner or admin, only people
    already in one of the tenants they own or administer. Accounts are made by superusers, who place a new user in
    a first tenant; from there its owners and admins can bring the user into their other tenants."""
    users = get_user_model()._default_manager.filter(is_active=True)
    if user.is_superuser:
        return users
    return users.filter(tenant_memberships__tenant_id__in=tenant_ids_editable_by(user=user)).distinct()


def tenant_named(*, tenants: QuerySet[Tenant], slug: object) -> Tenant:
    """The tenant with this slug among those the caller may see; anything else answers like a missing one (404).

    A value that is not a slug (a NUL byte, a list) names no tenant rather than reaching the database.
    """
    if not isinstance(slug, str) or not slug_re.match(slug):
        raise Http404
    return get_object_or_404(tenants, slug=slug)
