from dataclasses import dataclass

import pytest

from routing.models import Model
from routing.services import tenant_model_access_set
from tenants.models import Tenant
from tests.factories import ModelFactory, ProviderFactory, TenantFactory


@dataclass
class RoutingTenant:
    tenant: Tenant
    small: Model
    large: Model
    other: Model


def make_routing_tenant(slug: str) -> RoutingTenant:
    provider = ProviderFactory(name=f"upstream-{slug}")
    small = ModelFactory(name=f"{slug}-small", provider=provider)
    large = ModelFactory(name=f"{slug}-large", provider=provider)
    other = ModelFactory(name=f"{slug}-other", provider=provider)
    tenant = TenantFactory(slug=slug)
    tenant_model_access_set(tenant=tenant, allowed_models=[small, large, other], default_model=small)
    return RoutingTenant(tenant=tenant, small=small, large=large, other=other)


@pytest.fixture
def acme_routing(db) -> RoutingTenant:
    return make_routing_tenant("acme")


@pytest.fixture
def globex_routing(db) -> RoutingTenant:
    return make_routing_tenant("globex")
