"""Every admin page x every role: what each may see and do, in its own tenant and in another, against the role table.

The admin site is walked for its pages, so a model registered in the admin, or a page added to one, without an entry
here fails the test: a new page cannot ship without someone deciding who may use it. A row of another tenant answers
exactly like a row that does not exist (Django's "doesn't exist" redirect, or the same 403).
"""

from dataclasses import dataclass
from datetime import date

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.test import RequestFactory
from django.urls import URLResolver, reverse

from routing.models import Model, Provider, RoutingPolicy
from tenants.admin import TenantScopedAdmin
from tenants.models import Tenant
from tenants.permissions import ROLES_ALLOWED, Action, Role
from tests.admin.scenario import NO_MEMBERSHIP, SUPERUSER, World, make_user
from tests.module_rows import module_rows, own_rows
from tests.security.access import MISSING_ID, ROLES, make_full_world, may, may_somewhere, user_with

# -- The role table itself: a change to who may do what is a change to this grid. --------------------------------

TABLE = {
    Action.VIEW: {Role.OWNER, Role.ADMIN, Role.FINANCE, Role.VIEWER},
    Action.EDIT: {Role.OWNER, Role.ADMIN},
    Action.MANAGE_MEMBERS: {Role.OWNER, Role.ADMIN},
    Action.EXPORT: {Role.OWNER, Role.ADMIN, Role.FINANCE},
    Action.VIEW_ANSWERS: {Role.OWNER, Role.ADMIN},
}


def test_the_role_table():
    assert {action: set(roles) for action, roles in ROLES_ALLOWED.items()} == TABLE


# -- Permission methods, per model (the letters), with a row of each tenant. ---------------------------------------

LETTER_ROLES = (SUPERUSER, "owner", "admin", "finance", "viewer", NO_MEMBERSHIP)
# Letters: m module visible, v view own tenant's row, a add, c change own row, d delete own row,
# x view another tenant's row. "-" where the role may not.
PLATFORM = {SUPERUSER: "mvacdx", "owner": "-", "admin": "-", "finance": "-", "viewer": "-", NO_MEMBERSHIP: "-"}
EDITABLE = {
    SUPERUSER: "mvacdx",
    "owner": "mvacd",
    "admin": "mvacd",
    "finance": "mv",
    "viewer": "mv",
    NO_MEMBERSHIP: "-",
}
READ_ONLY = {SUPERUSER: "mvx", "owner": "mv", "admin": "mv", "finance": "mv", "viewer": "mv", NO_MEMBERSHIP: "-"}
TENANT = {SUPERUSER: "mvacdx", "owner": "mvc", "admin": "mvc", "finance": "mv", "viewer": "mv", NO_MEMBERSHIP: "-"}
# The model catalog and its prices: every member reads them, only superusers change them, nobody deletes a model
# (its price versions stay: they are what the ledger was charged at).
CATALOG = {SUPERUSER: "mvacx", "owner": "mvx", "admin": "mvx", "finance": "mvx", "viewer": "mvx", NO_MEMBERSHIP: "-"}
AUDIT_TRAIL = {SUPERUSER: "m", "owner": "-", "admin": "-", "finance": "-", "viewer": "-", NO_MEMBERSHIP: "-"}
# What the tenant's users asked and were told (cached answers, payload logs): its owners and admins look, nobody else.
TENANT_ADMINS_READ = {SUPERUSER: "mvx", "owner": "mv", "admin": "mv", "finance": "-", "viewer": "-", NO_MEMBERSHIP: "-"}

EXPECTED = {
    "tenants.tenant": TENANT,
    "tenants.team": EDITABLE,
    "tenants.apikey": EDITABLE,
    "tenants.membership": EDITABLE,
    "tenants.payloadlogsettings": EDITABLE,
    "tenants.payloadlog": TENANT_ADMINS_READ,
    "tenants.auditevent": READ_ONLY,
    "routing.provider": PLATFORM,
    "routing.model": CATALOG,
    "routing.tenantmodelaccess": EDITABLE,
    "routing.routingpolicy": EDITABLE,
    "routing.routingpolicyversion": READ_ONLY,
    "routing.routingpolicyaudit": READ_ONLY,
    "billing.usagerecord": READ_ONLY,
    "billing.budget": EDITABLE,
    "billing.alertchannel": EDITABLE,
    "billing.budgetalert": READ_ONLY,
    "billing.alertdelivery": READ_ONLY,
    "billing.anomaly": READ_ONLY,
    "billing.ratelimit": EDITABLE,
    "billing.evaluationsettings": EDITABLE,
    "billing.qualityslo": EDITABLE,
    "billing.qualityalert": READ_ONLY,
    "billing.shadowevaluation": READ_ONLY,
    "routing.cacheentry": TENANT_ADMINS_READ,
    "gateway.batch": READ_ONLY,
    "gateway.job": READ_ONLY,
    "auth.user": PLATFORM,
    "auth.group": PLATFORM,
    "django_celery_beat.periodictask": PLATFORM,
    "django_celery_beat.intervalschedule": PLATFORM,
    "django_celery_beat.crontabschedule": PLATFORM,
    "django_celery_beat.solarschedule": PLATFORM,
    "django_celery_beat.clockedschedule": PLATFORM,
    "axes.accessattempt": AUDIT_TRAIL,
    "axes.accessfailurelog": AUDIT_TRAIL,
    "axes.accesslog": AUDIT_TRAIL,
}
# No row of these exists in the scenario (empty third-party tables): class level only.
WITHOUT_ROWS = frozenset(
    {
        "auth.group",
        "django_celery_beat.periodictask",
        "django_celery_beat.intervalschedule",
        "django_celery_beat.crontabschedule",
        "django_celery_beat.solarschedule",
        "django_celery_beat.clockedschedule",
        "axes.accessattempt",
        "axes.accessfailurelog",
        "axes.accesslog",
    }
)


@pytest.fixture(scope="module")
def module_world(request, django_db_setup, django_db_blocker) -> World | None:
    with module_rows(request, django_db_blocker, make_full_world) as world:
        yield world


@pytest.fixture
def world(module_world, db) -> World:
    return own_rows(module_world, make_full_world)


def _rows_of(model_admin, tenant):
    """The model's rows: the tenant's for a tenant-owned one, all of them for a platform one."""
    manager = model_admin.model._default_manager
    return manager.for_tenant(tenant) if isinstance(model_admin, TenantScopedAdmin) else manager.all()


def _row_of(model_admin, tenant):
    return _rows_of(model_admin, tenant).order_by("pk").first()


def _letters(model_admin, request, own, other) -> str:
    granted = [
        ("m", model_admin.has_module_permission(request)),
        ("v", own is not None and model_admin.has_view_permission(request, own)),
        ("a", model_admin.has_add_permission(request)),
        ("c", own is not None and model_admin.has_change_permission(request, own)),
        ("d", own is not None and model_admin.has_delete_permission(request, own)),
        ("x", other is not None and model_admin.has_view_permission(request, other)),
    ]
    return "".join(letter for letter, allowed in granted if allowed) or "-"


def test_every_registered_admin_model_has_an_expected_row():
    registered = {model._meta.label_lower for model in admin.site._registry}
    assert registered - set(EXPECTED) == set()


def _only_class_level(letters: str) -> str:
    return "".join(letter for letter in letters if letter in "ma") or "-"


def permission_matrix(world, role) -> dict[str, str]:
    request = RequestFactory().get("/admin/")
    request.user = make_user(role, tenant=world.acme.tenant)
    matrix = {}
    for model, model_admin in admin.site._registry.items():
        own, other = _row_of(model_admin, world.acme.tenant), _row_of(model_admin, world.globex.tenant)
        if not isinstance(model_admin, TenantScopedAdmin):
            # Platform rows have no tenant: "another tenant's row" is the same row.
            other = own
        matrix[model._meta.label_lower] = _letters(model_admin, request, own, other)
    return matrix


@pytest.mark.parametrize("role", LETTER_ROLES)
def test_permission_matrix(world, role):
    actual = permission_matrix(world, role)
    expected = {}
    for label in actual:
        letters = EXPECTED[label][role]
        # Models whose rows this scenario cannot make (other apps' newest models) are checked at class level only.
        expected[label] = _only_class_level(letters) if label in WITHOUT_ROWS else letters
    assert actual == expected


@pytest.mark.parametrize("role", ["owner", "viewer"])
def test_changelists_show_no_row_of_another_tenant(world, client, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        if not isinstance(model_admin, TenantScopedAdmin) or opts.label_lower in WITHOUT_ROWS:
            continue
        response = client.get(f"/admin/{opts.app_label}/{opts.model_name}/")
        if "m" not in EXPECTED[opts.label_lower][role]:
            assert response.status_code == 403, opts.label
            continue
        assert response.status_code == 200, opts.label
        visible = set(response.context["cl"].result_list.values_list("pk", flat=True))
        others = set(_rows_of(model_admin, world.globex.tenant).values_list("pk", flat=True))
        assert visible and not visible & others, opts.label


# -- Every admin page over HTTP, against the role table. -----------------------------------------------------------

EDITORS, SUPERUSERS, NOBODY = "editors", "superusers", "nobody"


@dataclass(frozen=True)
class Pages:
    """What a tenant-owned model's admin pages need: `view` to see a row, `change` to change one (None: the rows
    are the system's, nobody changes them), and who adds and deletes rows."""

    view: Action
    change: Action | None = Action.EDIT
    add: str = EDITORS
    delete: str = EDITORS


READ = Pages(Action.VIEW, change=None, add=NOBODY, delete=NOBODY)
READ_ANSWERS = Pages(Action.VIEW_ANSWERS, change=None, add=NOBODY, delete=NOBODY)
TENANT_PAGES = {
    "tenants.tenant": Pages(Action.VIEW, add=SUPERUSERS, delete=SUPERUSERS),
    "tenants.team": Pages(Action.VIEW),
    "tenants.apikey": Pages(Action.VIEW),
    "tenants.membership": Pages(Action.VIEW, change=Action.MANAGE_MEMBERS),
    "tenants.payloadlogsettings": Pages(Action.VIEW),
    "tenants.payloadlog": READ_ANSWERS,
    "tenants.auditevent": READ,
    "routing.tenantmodelaccess": Pages(Action.VIEW),
    "routing.routingpolicy": Pages(Action.VIEW),
    "routing.routingpolicyversion": READ,
    "routing.routingpolicyaudit": READ,
    "routing.cacheentry": READ_ANSWERS,
    "billing.usagerecord": READ,
    "billing.budget": Pages(Action.VIEW),
    "billing.alertchannel": Pages(Action.VIEW),
    "billing.budgetalert": READ,
    "billing.alertdelivery": READ,
    "billing.anomaly": READ,
    "billing.ratelimit": Pages(Action.VIEW),
    "billing.evaluationsettings": Pages(Action.VIEW),
    "billing.qualityslo": Pages(Action.VIEW),
    "billing.qualityalert": READ,
    "billing.shadowevaluation": READ,
    "gateway.batch": READ,
    "gateway.job": READ,
}
# Rows of the platform, not of a tenant: superusers only, but for the catalog, which every member reads.
MEMBERS_READ = frozenset({"routing.model"})
# Third-party admins that add nothing, whoever asks.
NO_ADD_PAGE = frozenset({"axes.accessattempt", "axes.accessfailurelog", "axes.accesslog"})
PLATFORM_ROWS = {"routing.provider": Provider, "routing.model": Model, "auth.user": User}
# Platform rows nobody deletes in the admin: a model's price versions are what the ledger was charged at.
UNDELETABLE = frozenset({"routing.model"})
# Pages of platform admins beyond the model pages: a user's password form (the User admin's, superusers only).
PLATFORM_OBJECT_PAGES = {"auth.user": ("auth_user_password_change",)}

# Pages that are not a model admin's: each takes a tenant or a tenant's row, and answers for one it may not use as
# for one that does not exist. A request builder gets the client and the tenant (None: a tenant that does not exist).
SITE_PAGES = {
    # The admin site's own pages: they list only the models a user may see (the changelist column checks that) or
    # hold no tenant data.
    "index",
    "login",
    "logout",
    "password_change",
    "password_change_done",
    "autocomplete",
    "jsi18n",
    "view_on_site",
    "app_list",
}


def _export(client, tenant: Tenant | None):
    day = date.today().isoformat()
    data = {"tenant": tenant.pk if tenant else MISSING_ID, "since": day, "until": day}
    return client.post(reverse("admin:billing_usage_export"), data)


def _dashboard(client, tenant: Tenant | None):
    return client.get(reverse("admin:billing_usage_dashboard"), {"tenant": tenant.pk if tenant else MISSING_ID})


def _statement(client, tenant: Tenant | None):
    return client.get(reverse("admin:billing_usage_statement"), {"tenant": tenant.slug if tenant else "no-such"})


def _console(client, tenant: Tenant | None):
    policy_id = RoutingPolicy.objects.for_tenant(tenant).get().pk if tenant else MISSING_ID
    return client.get(reverse("admin:routing_routingpolicy_console", args=[policy_id]))


def _whatif(client, tenant: Tenant | None):
    policy_id = RoutingPolicy.objects.for_tenant(tenant).get().pk if tenant else MISSING_ID
    return client.get(reverse("admin:billing_policy_whatif", args=[policy_id]))


def _is_csv(response) -> bool:
    return response.status_code == 200 and response["Content-Type"].startswith("text/csv")


def _is_page(response) -> bool:
    return response.status_code == 200 and response["Content-Type"].startswith("text/html")


@dataclass(frozen=True)
class CustomPage:
    action: Action
    request: object
    succeeded: object


CUSTOM_PAGES = {
    "billing_usage_export": CustomPage(Action.EXPORT, _export, _is_csv),
    "billing_usage_dashboard": CustomPage(Action.VIEW, _dashboard, _is_page),
    "billing_usage_statement": CustomPage(Action.EXPORT, _statement, _is_page),
    "routing_routingpolicy_console": CustomPage(Action.EDIT, _console, _is_page),
    "billing_policy_whatif": CustomPage(Action.VIEW, _whatif, _is_page),
}
MODEL_PAGES = ("changelist", "add", "change", "delete", "history")


def _named_patterns(patterns) -> set[str]:
    names = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            names |= _named_patterns(pattern.url_patterns)
        elif pattern.name:
            names.add(pattern.name)
    return names


def test_every_admin_page_is_in_the_matrix():
    registered = {model._meta.label_lower for model in admin.site._registry}
    tenant_owned = {
        model._meta.label_lower
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, TenantScopedAdmin)
    }
    model_pages = {
        f"{model._meta.app_label}_{model._meta.model_name}_{page}"
        for model in admin.site._registry
        for page in MODEL_PAGES
    }

    assert tenant_owned == set(TENANT_PAGES)
    assert registered - tenant_owned <= set(EXPECTED)
    platform_pages = {name for names in PLATFORM_OBJECT_PAGES.values() for name in names}
    assert _named_patterns(admin.site.get_urls()) - model_pages - SITE_PAGES - platform_pages == set(CUSTOM_PAGES)


def _outcome(response) -> tuple:
    """What an answer tells its caller: its status, where it sends them, what kind of body it has."""
    return response.status_code, response.get("Location"), response.get("Content-Type", "").split(";")[0]


def _object_page(client, url_name: str, row_pk, missing_pk, *, allowed: bool, succeeded) -> tuple[str, object]:
    """ "ok" when the page served the row, "refused" when it answered exactly as for a row that does not exist; and
    the answer."""
    response = client.get(reverse(url_name, args=[quote(row_pk)]))
    if succeeded(response):
        return ("ok" if allowed else f"served to a role that may not: {_outcome(response)}"), response
    missing = client.get(reverse(url_name, args=[missing_pk]))
    if _outcome(response) != _outcome(missing):
        return f"told apart from a missing row: {_outcome(response)} vs {_outcome(missing)}", response
    return "refused", response


def _page_ok(response) -> bool:
    return response.status_code == 200


def _change_ok(response) -> bool:
    return response.status_code == 200 and "adminform" in response.context


def tenant_model_pages(client, world: World, role: str, label: str, model_admin) -> tuple[dict, dict]:
    pages = TENANT_PAGES[label]
    url = f"admin:{label.replace('.', '_')}"
    acme, globex = world.acme.tenant, world.globex.tenant
    rows = {tenant: _row_of(model_admin, tenant) for tenant in (acme, globex)}
    missing_pk = "missing" if model_admin.model._meta.pk.get_internal_type() == "CharField" else MISSING_ID

    def may_do(who: str, tenant) -> bool:
        if who == NOBODY or pages.change is None:
            return False
        return role == SUPERUSER if who == SUPERUSERS else may(role, pages.change, tenant, world)

    listed = client.get(reverse(f"{url}_changelist"))
    shown = set(listed.context["cl"].result_list.values_list("pk", flat=True)) if listed.status_code == 200 else set()
    if role == SUPERUSER:
        can_add = pages.add != NOBODY and pages.change is not None
    else:
        can_add = pages.add == EDITORS and pages.change is not None and may_somewhere(role, pages.change, world)
    actual = {
        "changelist": (listed.status_code, rows[acme].pk in shown, rows[globex].pk in shown),
        "add": client.get(reverse(f"{url}_add")).status_code,
    }
    expected = {
        "changelist": (
            200 if may_somewhere(role, pages.view, world) else 403,
            may(role, pages.view, acme, world),
            may(role, pages.view, globex, world),
        ),
        "add": 200 if can_add else 403,
    }
    for tenant, row in rows.items():
        can_view = may(role, pages.view, tenant, world)
        can_delete = may_do(pages.delete, tenant)
        verdict, change = _object_page(
            client, f"{url}_change", row.pk, missing_pk, allowed=can_view, succeeded=_change_ok
        )
        actual[f"change {tenant.slug}"] = verdict
        actual[f"change {tenant.slug} editable"] = change.context["has_change_permission"] if verdict == "ok" else None
        actual[f"delete {tenant.slug}"], _ = _object_page(
            client, f"{url}_delete", row.pk, missing_pk, allowed=can_delete, succeeded=_page_ok
        )
        actual[f"history {tenant.slug}"], _ = _object_page(
            client, f"{url}_history", row.pk, missing_pk, allowed=can_view, succeeded=_page_ok
        )
        expected[f"change {tenant.slug}"] = "ok" if can_view else "refused"
        expected[f"change {tenant.slug} editable"] = may_do(EDITORS, tenant) if can_view else None
        expected[f"delete {tenant.slug}"] = "ok" if can_delete else "refused"
        expected[f"history {tenant.slug}"] = "ok" if can_view else "refused"
    return actual, expected


def platform_model_pages(client, role: str, label: str, world: World) -> tuple[dict, dict]:
    url = f"admin:{label.replace('.', '_')}"
    reads = role == SUPERUSER or (label in MEMBERS_READ and may_somewhere(role, Action.VIEW, world))
    actual = {
        "changelist": client.get(reverse(f"{url}_changelist")).status_code,
        "add": client.get(reverse(f"{url}_add")).status_code,
    }
    expected = {
        "changelist": 200 if reads else 403,
        "add": 200 if role == SUPERUSER and label not in NO_ADD_PAGE else 403,
    }
    if label in PLATFORM_ROWS:
        row = PLATFORM_ROWS[label].objects.order_by("pk").first()
        actual["change"] = client.get(reverse(f"{url}_change", args=[row.pk])).status_code
        actual["delete"] = client.get(reverse(f"{url}_delete", args=[row.pk])).status_code
        expected["change"] = 200 if reads else 403
        expected["delete"] = 200 if role == SUPERUSER and label not in UNDELETABLE else 403
        for name in PLATFORM_OBJECT_PAGES.get(label, ()):
            actual[name] = client.get(reverse(f"admin:{name}", args=[row.pk])).status_code
            expected[name] = 200 if role == SUPERUSER else 403
    return actual, expected


def custom_pages(client, role: str, world: World) -> tuple[dict, dict]:
    actual, expected = {}, {}
    for name, page in CUSTOM_PAGES.items():
        for tenant in (world.acme.tenant, world.globex.tenant):
            allowed = may(role, page.action, tenant, world)
            response = page.request(client, tenant)
            if page.succeeded(response):
                outcome = "ok" if allowed else f"served to a role that may not: {_outcome(response)}"
            elif _outcome(response) != _outcome(missing := page.request(client, None)):
                outcome = f"told apart from a missing tenant: {_outcome(response)} vs {_outcome(missing)}"
            else:
                outcome = "refused"
            actual[f"{name} {tenant.slug}"] = outcome
            expected[f"{name} {tenant.slug}"] = "ok" if allowed else "refused"
    return actual, expected


@pytest.mark.parametrize("role", ROLES)
def test_every_admin_page_answers_each_role_as_the_role_table_says(client, world, role, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    client.force_login(user_with(role, world))
    actual, expected = {}, {}
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        if label in TENANT_PAGES:
            pages = tenant_model_pages(client, world, role, label, model_admin)
        else:
            pages = platform_model_pages(client, role, label, world)
        actual[label], expected[label] = pages
    actual["custom pages"], expected["custom pages"] = custom_pages(client, role, world)

    assert actual == expected
