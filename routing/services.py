from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction

from routing.crypto import encrypt_secret
from routing.models import Model, Provider, ProviderKind, TenantModelAccess
from tenants.models import Tenant


def provider_create(
    *,
    name: str,
    base_url: str,
    kind: str = ProviderKind.OPENAI,
    credential: str = "",
    credential_env_var: str = "",
    timeout_seconds: Decimal = Decimal("60"),
) -> Provider:
    provider = Provider(
        name=name, kind=kind, base_url=base_url, credential_env_var=credential_env_var, timeout_seconds=timeout_seconds
    )
    if credential:
        provider.credential_encrypted = encrypt_secret(credential)
    provider.full_clean()
    provider.save()
    return provider


def provider_credential_set(*, provider: Provider, credential: str) -> Provider:
    """Store a new credential, encrypted. An empty one clears it."""
    provider.credential_encrypted = encrypt_secret(credential) if credential else ""
    provider.save(update_fields=["credential_encrypted"])
    return provider


def model_create(
    *,
    name: str,
    provider: Provider,
    upstream_name: str,
    input_price_per_million: Decimal,
    cached_input_price_per_million: Decimal,
    output_price_per_million: Decimal,
    context_window: int = 128_000,
) -> Model:
    model = Model(
        name=name,
        provider=provider,
        upstream_name=upstream_name,
        input_price_per_million=input_price_per_million,
        cached_input_price_per_million=cached_input_price_per_million,
        output_price_per_million=output_price_per_million,
        context_window=context_window,
    )
    model.full_clean()
    model.save()
    return model


@transaction.atomic
def tenant_model_access_set(
    *, tenant: Tenant, allowed_models: list[Model], default_model: Model | None
) -> TenantModelAccess:
    if default_model is not None and default_model not in allowed_models:
        raise ValidationError(f"the default model {default_model.name} must be one of the allowed models")
    access, _ = TenantModelAccess.objects.get_or_create(tenant=tenant)
    access.default_model = default_model
    access.save()
    access.allowed_models.set(allowed_models)
    return access
