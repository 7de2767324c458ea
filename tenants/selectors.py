from django.db.models import QuerySet

from tenants.models import EDITING_ROLES, Membership, Tenant


def tenants_for_user(*, user) -> QuerySet[Tenant]:
    """Tenants a user may see: all for a superuser, otherwise those they are a member of."""
    if user.is_superuser:
        return Tenant.objects.all()
    return Tenant.objects.filter(memberships__user=user)


def tenant_ids_editable_by(*, user) -> set[int]:
    return set(Membership.objects.filter(user=user, role__in=EDITING_ROLES).values_list("tenant_id", flat=True))
