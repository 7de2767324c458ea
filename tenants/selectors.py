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


def tenant_named(*, tenants: QuerySet[Tenant], slug: object) -> Tenant:
    """The tenant with this slug among those the caller may see; anything else answers like a missing one (404).

    A value that is not a slug (a NUL byte, a list) names no tenant rather than reaching the database.
    """
    if not isinstance(slug, str) or not slug_re.match(slug):
        raise Http404
    return get_object_or_404(tenants, slug=slug)
