"""Every registered admin model x every role: what each may see and do, in its own tenant and in another.

A model registered in the admin without an entry in EXPECTED fails the test, so a new admin page cannot
ship without someone deciding who may use it.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.utils import timezone

from billing.alerts.services import alert_channel_create
from billing.budgets.services import budget_create
from billing.models import AlertDelivery, Anomaly, BudgetAlert
from billing.ratelimits import rate_limit_create
from routing.cache.sealed import seal_answer
from routing.models import CacheEntry
from routing.services import routing_policy_create_default
from tenants.admin import TenantScopedAdmin
from tenants.models import PayloadLog
from tenants.services import payload_log_settings_set
from tests.admin.scenario import NO_MEMBERSHIP, SUPERUSER, make_user, make_world

ROLES = (SUPERUSER, "owner", "admin", "finance", "viewer", NO_MEMBERSHIP)
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
# The model catalog and its prices: every member reads them, only superusers change them.
CATALOG = {SUPERUSER: "mvacdx", "owner": "mvx", "admin": "mvx", "finance": "mvx", "viewer": "mvx", NO_MEMBERSHIP: "-"}
AUDIT_TRAIL = {SUPERUSER: "m", "owner": "-", "admin": "-", "finance": "-", "viewer": "-", NO_MEMBERSHIP: "-"}
# What the tenant's users asked and were told (cached answers): its owners and admins look, nobody else.
TENANT_ADMINS_READ = {SUPERUSER: "mvx", "owner": "mv", "admin": "mv", "finance": "-", "viewer": "-", NO_MEMBERSHIP: "-"}

EXPECTED = {
    "tenants.tenant": TENANT,
    "tenants.team": EDITABLE,
    "tenants.apikey": EDITABLE,
    "tenants.membership": EDITABLE,
    "tenants.payloadlogsettings": EDITABLE,
    "tenants.payloadlog": READ_ONLY,
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
# No row of these exists in the scenario (other apps' newest models, empty third-party tables): class level only.
WITHOUT_ROWS = frozenset(
    {
        "gateway.batch",
        "gateway.job",
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


def _tenant_rows(rows) -> None:
    """One row of every tenant-owned model the core scenario does not make."""
    tenant = rows.tenant
    channel = alert_channel_create(tenant=tenant, name=f"{tenant.slug}-ops", kind="email", target="ops@example.com")
    budget = budget_create(tenant=tenant, limit_usd=Decimal("10"))
    alert = BudgetAlert.objects.create(
        budget=budget, period_key="2026-01", threshold=50, spent_usd=Decimal("5"), limit_usd=Decimal("10")
    )
    AlertDelivery.objects.create(budget_alert=alert, channel=channel)
    Anomaly.objects.create(
        tenant=tenant,
        metric="spend",
        window="day",
        window_end=timezone.now() - timedelta(hours=1),
        observed=Decimal("9"),
        baseline_median=Decimal("1"),
        baseline_mad=Decimal("0.1"),
        score=Decimal("80"),
        direction="spike",
    )
    rate_limit_create(tenant=tenant, team=rows.team, requests_per_minute=60)
    routing_policy_create_default(tenant=tenant, small_model=rows.catalog_model, large_model=rows.catalog_model)
    payload_log_settings_set(tenant=tenant, enabled=True)
    PayloadLog.objects.create(tenant=tenant, request_id=f"req-{tenant.slug}", request={})
    CacheEntry.objects.create(
        tenant=tenant,
        served_model=rows.catalog_model.name,
        key_hash=f"{tenant.pk:064x}",
        answer_encrypted=seal_answer({"choices": [{"message": {"role": "assistant", "content": tenant.slug}}]}),
        expires_at=timezone.now() + timedelta(hours=1),
    )


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


@pytest.fixture
def world(db):
    world = make_world()
    _tenant_rows(world.acme)
    _tenant_rows(world.globex)
    return world


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


@pytest.mark.parametrize("role", ROLES)
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
