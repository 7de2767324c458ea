"""The provider and price fields the Anthropic and Bedrock adapters need reach the in-memory catalog."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from core.crypto import encrypt_secret
from routing.catalog import build_models_by_id, model_catalog_compose
from routing.models import Provider, ProviderKind
from routing.providers.kinds import CONNECTION_FIELDS, provider_kind
from routing.upstream import ADAPTERS
from tests.factories import ModelFactory, ProviderFactory


@pytest.mark.django_db
def test_bedrock_provider_and_cache_write_price_reach_the_catalog():
    bedrock = ProviderFactory(
        name="bedrock-east",
        kind=ProviderKind.BEDROCK,
        base_url="",
        region="us-east-1",
        credential_encrypted=encrypt_secret("AKIDEXAMPLE:secret"),
    )
    ModelFactory(name="claude-on-bedrock", provider=bedrock, cache_write_price_per_million=Decimal("3.75"))
    ModelFactory(name="no-write-price", provider=bedrock)

    catalog = model_catalog_compose(build_models_by_id(), {})

    entry = catalog.models["claude-on-bedrock"]
    assert (entry.provider.kind, entry.provider.region, entry.provider.base_url) == ("bedrock", "us-east-1", "")
    assert entry.provider.api_key == "AKIDEXAMPLE:secret"
    assert entry.prices.cache_write_per_million == Decimal("3.75")
    assert catalog.models["no-write-price"].prices.cache_write_per_million is None


@pytest.mark.parametrize(
    ("kind", "base_url", "region", "field"),
    [
        (ProviderKind.ANTHROPIC, "", "", "base_url"),
        (ProviderKind.OPENAI, "", "", "base_url"),
        (ProviderKind.BEDROCK, "", "", "region"),
    ],
)
def test_provider_without_what_its_kind_needs_is_refused(kind, base_url, region, field):
    provider = Provider(name="incomplete", kind=kind, base_url=base_url, region=region)

    with pytest.raises(ValidationError) as excinfo:
        provider.full_clean(validate_unique=False)

    assert field in excinfo.value.message_dict


def test_bedrock_without_endpoint_and_anthropic_with_one_are_valid():
    Provider(name="aws", kind=ProviderKind.BEDROCK, region="eu-west-1").full_clean(validate_unique=False)
    Provider(name="claude", kind=ProviderKind.ANTHROPIC, base_url="https://api.anthropic.com/v1").full_clean(
        validate_unique=False
    )


def test_a_field_its_kind_does_not_read_is_refused():
    provider = Provider(
        name="openai", kind=ProviderKind.OPENAI, base_url="https://api.openai.com/v1", region="eu-west-1"
    )

    with pytest.raises(ValidationError) as excinfo:
        provider.full_clean(validate_unique=False)

    assert list(excinfo.value.message_dict) == ["region"]


@pytest.mark.parametrize("kind", list(ProviderKind))
def test_every_kind_has_an_adapter_and_names_only_connection_fields(kind):
    spec = provider_kind(kind)

    assert callable(ADAPTERS[kind].chat_completion) and callable(ADAPTERS[kind].open_chat_stream)
    assert set(spec.fields) <= set(CONNECTION_FIELDS) and set(spec.notes) <= set(spec.fields)
