from decimal import Decimal

import factory

from routing.models import PRICE_FIELDS, Model, Provider
from routing.prices import model_price_set
from tenants.models import Team, Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    tenant = factory.SubFactory(TenantFactory)
    slug = factory.Sequence(lambda n: f"team-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider

    name = factory.Sequence(lambda n: f"provider-{n}")
    base_url = "http://127.0.0.1:9/v1"
    timeout_seconds = Decimal("5")


class ModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Model

    name = factory.Sequence(lambda n: f"model-{n}")
    provider = factory.SubFactory(ProviderFactory)
    upstream_name = "mock-small"
    input_price_per_million = Decimal("0.15")
    cached_input_price_per_million = Decimal("0.075")
    output_price_per_million = Decimal("0.60")
    cache_write_price_per_million = None

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        """The model, and its prices as its first version, in force from its creation."""
        prices = {name: kwargs.pop(name) for name in PRICE_FIELDS}
        model = super()._create(model_class, *args, **kwargs)
        model_price_set(
            model=model,
            prices={name: None if value is None else Decimal(str(value)) for name, value in prices.items()},
            effective_from=model.created_at,
            source="test factory",
        )
        return model


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "auth.User"

    username = factory.Sequence(lambda n: f"user-{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")


class UsageRecordFactory(factory.django.DjangoModelFactory):
    """Pass the api_key; tenant, team and time follow from it."""

    class Meta:
        model = "billing.UsageRecord"

    request_id = factory.Sequence(lambda n: f"req-{n}")
    tenant = factory.SelfAttribute("api_key.tenant")
    team = factory.SelfAttribute("api_key.team")
    requested_model = "default"
    served_model = "model-small"
    prompt_tokens = 12
    completion_tokens = 30
    cost_usd = Decimal("0.0000198")
    total_latency_ms = 40
    http_status = 200
    created_at = factory.SelfAttribute("api_key.created_at")
