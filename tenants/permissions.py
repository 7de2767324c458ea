"""Who may do what in a tenant: one table from action to the roles allowed it.

The admin, the management API (`/api/`) and the finance pages and exports all ask this table: through
`restrict(user, action)` on a tenant-scoped queryset (tenants.scoping) for rows, and through `TenantAccess`
for a yes or no about one tenant. A superuser may do everything in every tenant; a user without a membership
may do nothing in that tenant, and cannot tell its rows from rows that do not exist.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    FINANCE = "finance", "Finance"
    VIEWER = "viewer", "Viewer"


class Action(models.TextChoices):
    VIEW = "view", "See the tenant's configuration, usage, audit log and dashboard"
    EDIT = "edit", "Change the tenant's configuration: teams, keys, budgets, channels, limits, policies, cache"
    MANAGE_MEMBERS = "manage_members", "Add members and change their roles"
    EXPORT = "export", "Export usage (CSV, the usage API) and read monthly statements"
    VIEW_ANSWERS = "view_answers", "Read prompts and answers: cached answers, payload logs, judges' reasons"


ROLES_ALLOWED: Mapping[Action, frozenset[Role]] = {
    Action.VIEW: frozenset(Role),
    Action.EDIT: frozenset({Role.OWNER, Role.ADMIN}),
    Action.MANAGE_MEMBERS: frozenset({Role.OWNER, Role.ADMIN}),
    Action.EXPORT: frozenset({Role.OWNER, Role.ADMIN, Role.FINANCE}),
    # What the tenant's users asked and were told: its owners and admins, not its finance or viewer members.
    Action.VIEW_ANSWERS: frozenset({Role.OWNER, Role.ADMIN}),
}


@dataclass(frozen=True, slots=True)
class TenantAccess:
    """One user's roles, by tenant id: the answers about single tenants an admin page asks many times."""

    is_superuser: bool
    roles: Mapping[int, Role]

    def allows(self, action: Action, tenant_id: int | None) -> bool:
        if self.is_superuser:
            return True
        role = self.roles.get(tenant_id)
        return role is not None and role in ROLES_ALLOWED[action]

    def allows_somewhere(self, action: Action) -> bool:
        return self.is_superuser or any(role in ROLES_ALLOWED[action] for role in self.roles.values())
