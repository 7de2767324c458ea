from dataclasses import dataclass

import pytest

from billing.alerts.services import alert_channel_create
from billing.models import AlertChannel, ChannelKind
from routing.models import Model
from routing.services import routing_policy_create_default, tenant_model_access_set
from tenants.models import Tenant
from tests.factories import ModelFactory, ProviderFactory, TenantFactory
from tests.finance.conftest import module_seeded, seeded  # noqa: F401  (the demo's synthetic history, for tests here too)


@dataclass
class Shop:
    """A tenant with the default routing policy live on its small and large model, and alert channels."""

    tenant: Tenant
    small: Model
    large: Model
    on_call: AlertChannel


def make_shop(slug: str) -> Shop:
    provider = ProviderFactory(name=f"upstream-{slug}")
    small = ModelFactory(name=f"{slug}-small", provider=provider)
    large = ModelFactory(name=f"{slug}-large", provider=provider, output_price_per_million=10)
    tenant = TenantFactory(slug=slug)
    tenant_model_access_set(tenant=tenant, allowed_models=[small, large], default_model=small)
    routing_policy_create_default(tenant=tenant, small_model=small, large_model=large)
    on_call = alert_channel_create(tenant=tenant, name="on-call", kind=ChannelKind.EMAIL, target=f"oncall@{slug}.test")
    alert_channel_create(
        tenant=tenant, name="retired", kind=ChannelKind.EMAIL, target=f"old@{slug}.test", is_active=False
    )
    return Shop(tenant=tenant, small=small, large=large, on_call=on_call)


@pytest.fixture
def shop(db) -> Shop:
    return make_shop("shop")
