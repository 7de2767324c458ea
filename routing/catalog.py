"""The model catalog as plain frozen objects, built once per configuration snapshot."""

import logging
import os
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from routing.crypto import CredentialDecryptionError, decrypt_secret
from routing.models import Model, Provider, TenantModelAccess
from routing.secret_references import SecretReferenceError, is_secret_reference, secret_reference_resolve

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ALIAS = "default"


class ModelPrices(NamedTuple):
    """USD per million tokens. ``cache_write_per_million`` None means cache writes cost the input price."""

    input_per_million: Decimal
    cached_input_per_million: Decimal
    output_per_million: Decimal
    cache_write_per_million: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    name: str
    kind: str
    base_url: str
    api_key: str
    timeout_seconds: float
    region: str = ""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    upstream_name: str
    provider: ProviderEntry
    prices: ModelPrices
    context_window: int
    # None: unknown, so a budgeted request without max_tokens is capped at LLMOPS_RESERVATION_MAX_TOKENS.
    max_output_tokens: int | None = None
    supports_tools: bool = True
    supports_images: bool = True


@dataclass(frozen=True, slots=True)
class TenantAccess:
    default_model: str | None
    allowed_models: frozenset[str]


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    models: dict[str, ModelEntry]
    access_by_tenant: dict[int, TenantAccess]

    def access_for(self, tenant_id: int) -> TenantAccess:
        return self.access_by_tenant.get(tenant_id, NO_ACCESS)

    def models_for(self, tenant_id: int) -> list[ModelEntry]:
        allowed = self.access_for(tenant_id).allowed_models
        return [entry for name, entry in sorted(self.models.items()) if name in allowed]


NO_ACCESS = TenantAccess(default_model=None, allowed_models=frozenset())


def provider_credential(provider: Provider) -> str:
    """The plaintext credential: the encrypted one, else the named environment variable, else empty.

    Either may hold a reference to AWS Secrets Manager or Parameter Store instead, resolved here.
    """
    if provider.credential_encrypted:
        try:
            credential = decrypt_secret(provider.credential_encrypted)
        except CredentialDecryptionError:
            logger.error("credential of provider %s cannot be decrypted; calls will be unauthenticated", provider.name)
            return ""
    elif provider.credential_env_var:
        credential = os.environ.get(provider.credential_env_var, "")
    else:
        return ""
    if not is_secret_reference(credential):
        return credential
    try:
        return secret_reference_resolve(credential)
    except SecretReferenceError as exc:
        logger.error(
            "credential of provider %s cannot be resolved (%s); calls will be unauthenticated", provider.name, exc
        )
        return ""


def build_model_catalog() -> ModelCatalog:
    providers = {
        provider.pk: ProviderEntry(
            name=provider.name,
            kind=provider.kind,
            base_url=provider.base_url.rstrip("/"),
            api_key=provider_credential(provider),
            timeout_seconds=float(provider.timeout_seconds),
            region=provider.region,
        )
        for provider in Provider.objects.filter(is_active=True)
    }
    models = {
        model.name: ModelEntry(
            name=model.name,
            upstream_name=model.upstream_name,
            provider=providers[model.provider_id],
            prices=ModelPrices(
                model.input_price_per_million,
                model.cached_input_price_per_million,
                model.output_price_per_million,
                model.cache_write_price_per_million,
            ),
            context_window=model.context_window,
            max_output_tokens=model.max_output_tokens,
            supports_tools=model.supports_tools,
            supports_images=model.supports_images,
        )
        for model in Model.objects.filter(is_active=True, provider_id__in=providers)
    }
    access = {}
    for row in TenantModelAccess.objects.select_related("default_model").prefetch_related("allowed_models"):
        allowed = frozenset(m.name for m in row.allowed_models.all() if m.name in models)
        default = row.default_model.name if row.default_model and row.default_model.name in allowed else None
        access[row.tenant_id] = TenantAccess(default_model=default, allowed_models=allowed)
    return ModelCatalog(models=models, access_by_tenant=access)
