"""Data and helpers the admin tests share."""

from dataclasses import dataclass

from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.urls import reverse

from billing.models import Lever, QualityAlert, QualitySlo, ShadowEvaluation, UsageRecord
from billing.quality.services import quality_slo_create
from routing.models import Model, Provider, TenantModelAccess
from routing.services import tenant_model_access_set
from tenants.models import ApiKey, Membership, Role, Team, Tenant
from tenants.services import api_key_create, membership_set
from tests.factories import ModelFactory, ProviderFactory, TeamFactory, TenantFactory, UsageRecordFactory, UserFactory
from tests.quality.factories import ShadowEvaluationFactory

NO_MEMBERSHIP = "none"
SUPERUSER = "superuser"


@dataclass
class TenantRows:
    """One row of every tenant-owned admin model, all in one tenant, plus the shared catalog."""

    tenant: Tenant
    team: Team
    api_key: ApiKey
    membership: Membership
    model_access: TenantModelAccess
    usage_record: UsageRecord
    catalog_model: Model
    provider: Provider
    quality_slo: QualitySlo
    quality_alert: QualityAlert
    shadow_evaluation: ShadowEvaluation


@dataclass
class World:
    """Two tenants whose slugs appear in every row of theirs, so a page leaking one is easy to spot."""

    acme: TenantRows
    globex: TenantRows


def make_tenant_rows(slug: str, *, catalog_model: Model) -> TenantRows:
    tenant = TenantFactory(slug=slug)
    team = TeamFactory(tenant=tenant, slug=f"{slug}-team")
    api_key, _ = api_key_create(team=team, name=f"{slug}-key")
    slo = quality_slo_create(tenant=tenant, lever=Lever.ROUTING)
    return TenantRows(
        tenant=tenant,
        team=team,
        api_key=api_key,
        membership=membership_set(tenant=tenant, user=UserFactory(username=f"{slug}-member"), role=Role.VIEWER),
        model_access=tenant_model_access_set(
            tenant=tenant, allowed_models=[catalog_model], default_model=catalog_model
        ),
        usage_record=UsageRecordFactory(api_key=api_key, request_id=f"req-{slug}"),
        catalog_model=catalog_model,
        provider=catalog_model.provider,
        quality_slo=slo,
        quality_alert=QualityAlert.objects.create(
            slo=slo, samples=50, agreement="0.8", lower_bound="0.67", upper_bound="0.89"
        ),
        shadow_evaluation=ShadowEvaluationFactory(
            tenant=tenant, request_id=f"sampled-{slug}", served_model=f"{slug}-m"
        ),
    )


def make_world() -> World:
    catalog_model = ModelFactory(name="catalog-small", provider=ProviderFactory(name="hidden-upstream"))
    return World(
        acme=make_tenant_rows("acme", catalog_model=catalog_model),
        globex=make_tenant_rows("globex", catalog_model=catalog_model),
    )


def make_user(role: str, *, tenant: Tenant) -> User:
    """A staff user with `role` in `tenant`; NO_MEMBERSHIP gives none, SUPERUSER a superuser without one."""
    user = UserFactory(is_staff=True, is_superuser=role == SUPERUSER)
    if role not in (NO_MEMBERSHIP, SUPERUSER):
        membership_set(tenant=tenant, user=user, role=Role(role))
    return user


def admin_url(admin_name: str, view: str, *args) -> str:
    """The admin's URL, its object ids escaped as the admin's own links are: `job_22…` unescaped reads as `job"…`."""
    return reverse(f"admin:{admin_name}_{view}", args=[quote(arg) for arg in args])
