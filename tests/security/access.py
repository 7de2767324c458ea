"""The people and rows the permission matrix tests ask about: two tenants with a row of every tenant-owned model
each, and a user for every role in the first (acme), an owner of the second (globex) as the outsider, a staff user
without a membership and a superuser."""

from datetime import timedelta
from decimal import Decimal

from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from billing.alerts.services import alert_channel_create
from billing.budgets.services import budget_create
from billing.evaluation.services import evaluation_settings_set
from billing.models import AlertDelivery, Anomaly, BudgetAlert, ExportStatus, UsageExport
from billing.ratelimits import rate_limit_create
from llmops.gateway.batches.models import Batch, File, Job
from routing.cache.sealed import seal_answer
from routing.models import CacheEntry
from routing.services import routing_policy_create_default
from tenants.models import PayloadLog, Tenant
from tenants.permissions import ROLES_ALLOWED, Action, Role
from tenants.services import payload_log_settings_set
from tests.admin.scenario import NO_MEMBERSHIP, SUPERUSER, TenantRows, World, make_user, make_world

OUTSIDER = "outsider"
ROLES = (SUPERUSER, Role.OWNER, Role.ADMIN, Role.FINANCE, Role.VIEWER, OUTSIDER, NO_MEMBERSHIP)
MISSING_ID = 10**9


def user_with(role: str, world: World) -> User:
    """A staff user: `role` in acme, an owner of globex for OUTSIDER."""
    if role == OUTSIDER:
        return make_user(Role.OWNER, tenant=world.globex.tenant)
    return make_user(role, tenant=world.acme.tenant)


def role_in(role: str, tenant: Tenant, world: World) -> Role | None:
    if role == OUTSIDER:
        return Role.OWNER if tenant == world.globex.tenant else None
    if role in (NO_MEMBERSHIP, SUPERUSER):
        return None
    return Role(role) if tenant == world.acme.tenant else None


def may(role: str, action: Action, tenant: Tenant, world: World) -> bool:
    """What the role table allows `role` in `tenant`: the expectation every page is checked against."""
    return role == SUPERUSER or role_in(role, tenant, world) in ROLES_ALLOWED[action]


def may_somewhere(role: str, action: Action, world: World) -> bool:
    return any(may(role, action, rows.tenant, world) for rows in (world.acme, world.globex))


def add_tenant_rows(rows: TenantRows) -> None:
    """One row of every tenant-owned model the admin scenario does not make."""
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
    evaluation_settings_set(tenant=tenant, enabled=True, monthly_budget_usd=Decimal("5"))
    PayloadLog.objects.create(tenant=tenant, request_id=f"req-{tenant.slug}", request={})
    CacheEntry.objects.create(
        tenant=tenant,
        served_model=rows.catalog_model.name,
        key_hash=f"{tenant.pk:064x}",
        answer_encrypted=seal_answer({"choices": [{"message": {"role": "assistant", "content": tenant.slug}}]}),
        expires_at=timezone.now() + timedelta(hours=1),
    )
    owned_by_key = {"tenant": tenant, "team": rows.team, "api_key": rows.api_key}
    input_file = File.objects.create(**owned_by_key, filename="in.jsonl", purpose="batch", bytes=0)
    Batch.objects.create(
        **owned_by_key,
        input_file=input_file,
        endpoint="/v1/chat/completions",
        expires_at=timezone.now() + timedelta(days=1),
    )
    Job.objects.create(**owned_by_key, body={"model": rows.catalog_model.name, "messages": []})
    export = UsageExport.objects.create(
        tenant=tenant, since=timezone.now().date(), until=timezone.now().date(), status=ExportStatus.DONE
    )
    export.file_name = default_storage.save(
        f"usage-exports/{tenant.pk}/{export.pk}-usage-{tenant.slug}.csv", ContentFile(b"request_id\n")
    )
    export.save(update_fields=["file_name"])


def make_full_world() -> World:
    world = make_world()
    add_tenant_rows(world.acme)
    add_tenant_rows(world.globex)
    return world
