from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import User

from billing.models import UsageRecord
from tenants.models import ApiKey, Role, Team, Tenant
from tenants.services import api_key_create, membership_set
from tests.factories import TeamFactory, TenantFactory, UserFactory
from tests.module_rows import module_rows, own_rows


@dataclass
class FinanceTenant:
    tenant: Tenant
    teams: list[Team]
    keys: list[ApiKey]
    finance_user: User


def make_finance_tenant(slug: str, *, time_zone: str = "UTC") -> FinanceTenant:
    tenant = TenantFactory(slug=slug, time_zone=time_zone)
    teams = [TeamFactory(tenant=tenant, slug=f"{slug}-{name}") for name in ("search", "support")]
    keys = [api_key_create(team=team, name=f"{team.slug}-key")[0] for team in teams]
    finance_user = UserFactory(username=f"{slug}-finance", is_staff=True)
    membership_set(tenant=tenant, user=finance_user, role=Role.FINANCE)
    return FinanceTenant(tenant=tenant, teams=teams, keys=keys, finance_user=finance_user)


_request_counter = iter(range(10**9))


def usage_row(
    api_key: ApiKey,
    *,
    created_at: datetime,
    cost: Decimal | str = "0.0000100000",
    model: str = "m-small",
    http_status: int = 200,
    latency_ms: int = 100,
    cache_status: str = "miss",
    prompt_tokens: int = 10,
    completion_tokens: int = 20,
    tags: list[str] | None = None,
) -> UsageRecord:
    return UsageRecord(
        request_id=f"req-{next(_request_counter)}",
        tenant_id=api_key.tenant_id,
        team_id=api_key.team_id,
        api_key=api_key,
        served_model=model,
        requested_model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=Decimal(cost),
        total_latency_ms=latency_ms,
        cache_status=cache_status,
        http_status=http_status,
        created_at=created_at,
        tags=tags or [],
    )


@pytest.fixture
def acme(db) -> FinanceTenant:
    return make_finance_tenant("acme")


@pytest.fixture
def globex(db) -> FinanceTenant:
    return make_finance_tenant("globex")


def make_seeded() -> FinanceTenant:
    """A tenant with a small and a large model and a few weeks of synthetic usage, rollups built."""
    from billing.finance.rollups_seed import seed_demo_usage
    from routing.services import tenant_model_access_set
    from tests.factories import ModelFactory

    setup = make_finance_tenant("seeded", time_zone="Europe/Paris")
    small = ModelFactory(name="seeded-small")
    large = ModelFactory(
        name="seeded-large",
        input_price_per_million=Decimal("2.50"),
        cached_input_price_per_million=Decimal("1.25"),
        output_price_per_million=Decimal("10.00"),
    )
    tenant_model_access_set(tenant=setup.tenant, allowed_models=[small, large], default_model=small)
    seed_demo_usage(tenant=setup.tenant, days=10)
    return setup


@pytest.fixture(scope="module")
def module_seeded(request, django_db_setup, django_db_blocker) -> FinanceTenant | None:
    with module_rows(request, django_db_blocker, make_seeded) as seeded:
        yield seeded


@pytest.fixture
def seeded(module_seeded, db) -> FinanceTenant:
    return own_rows(module_seeded, make_seeded)
