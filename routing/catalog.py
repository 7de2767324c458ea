"""The model catalog as plain frozen objects: the shared models and prices, and each tenant's grant of them."""

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from django.db.models import Min

from core.crypto import CredentialDecryptionError, decrypt_secret
from core.secret_references import SecretReferenceError, is_secret_reference, secret_reference_resolve
from routing.models import Model, ModelKind, ModelPrice, Provider, TenantModelAccess

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ALIAS = "default"


class ModelPrices(NamedTuple):
    """USD per million tokens. ``cache_write_per_million`` None means cache writes cost the input price.
    ``version_id``: the ModelPrice they are, which the ledger row of a request priced at them keeps."""

    input_per_million: Decimal
    cached_input_per_million: Decimal
    output_per_million: Decimal
    cache_write_per_million: Decimal | None = None
    version_id: int | None = None


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
    kind: str = ModelKind.CHAT
    # When the catalog entry was made (Unix seconds): /v1/models' `created`, stable from one listing to the next.
    created: int = 0
    # The share of its prices an answer of the provider's batch endpoint is charged.
    batch_price_multiplier: Decimal = Decimal("0.5")
    # The share of its prices an answer served at the provider's flex tier is charged; None: no flex prices.
    flex_price_multiplier: Decimal | None = None


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

    def prompt_counting_model(self, tenant_id: int, requested: str) -> str:
        """The upstream name whose encoding counts the prompt before the served model is known: the requested
        model's, else for an alias such as `auto` the tenant's default model's (live routing and its simulation)."""
        entry = self.models.get(requested) or self.models.get(self.access_for(tenant_id).default_model or "")
        return entry.upstream_name if entry else requested


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


@dataclass(frozen=True, slots=True)
class ModelGrant:
    """A tenant's model access as stored (model ids), resolved against the active models when a catalog is composed,
    so a model renamed, priced or switched off changes no tenant's grant."""

    default_model_id: int | None
    allowed_model_ids: frozenset[int]

    def resolve(self, models_by_id: dict[int, ModelEntry]) -> TenantAccess:
        allowed = frozenset(models_by_id[pk].name for pk in self.allowed_model_ids if pk in models_by_id)
        default = models_by_id.get(self.default_model_id)
        return TenantAccess(
            default_model=default.name if default is not None and default.name in allowed else None,
            allowed_models=allowed,
        )


def build_models_by_id(*, at: datetime | None = None) -> dict[int, ModelEntry]:
    """The active models of active providers, by primary key, at the prices in force at ``at`` (default now): the
    configuration every tenant shares. A model whose first prices are yet to take effect is left out until they do."""
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
    models = (
        Model.objects.filter(is_active=True, provider_id__in=providers)
        .with_prices_in_force(at)
        .filter(price_version_id__isnull=False)
    )
    return {
        model.pk: ModelEntry(
            name=model.name,
            upstream_name=model.upstream_name,
            provider=providers[model.provider_id],
            prices=ModelPrices(
                model.input_price_per_million,
                model.cached_input_price_per_million,
                model.output_price_per_million,
                model.cache_write_price_per_million,
                version_id=model.price_version_id,
            ),
            context_window=model.context_window,
            max_output_tokens=model.max_output_tokens,
            supports_tools=model.supports_tools,
            supports_images=model.supports_images,
            created=int(model.created_at.timestamp()),
            kind=model.kind,
            batch_price_multiplier=model.batch_price_multiplier,
            flex_price_multiplier=model.flex_price_multiplier,
        )
        for model in models
    }


def next_price_change(*, after: datetime) -> datetime | None:
    """When the next price version of an active model takes effect after ``after``: the moment a catalog built at
    ``after`` stops being true."""
    upcoming = ModelPrice.objects.filter(
        effective_from__gt=after, model__is_active=True, model__provider__is_active=True
    ).aggregate(first=Min("effective_from"))
    return upcoming["first"]


def build_model_grants(*, tenant_id: int) -> dict[int, ModelGrant]:
    """Tenant id → its model grant, for the one tenant (none if it has no model access yet)."""
    rows = TenantModelAccess.objects.for_tenant(tenant_id).prefetch_related("allowed_models")
    return {
        row.tenant_id: ModelGrant(
            default_model_id=row.default_model_id,
            allowed_model_ids=frozenset(model.pk for model in row.allowed_models.all()),
        )
        for row in rows
    }


def model_catalog_compose(models_by_id: dict[int, ModelEntry], grants: dict[int, ModelGrant]) -> ModelCatalog:
    return ModelCatalog(
        models={entry.name: entry for entry in models_by_id.values()},
        access_by_tenant={tenant_id: grant.resolve(models_by_id) for tenant_id, grant in grants.items()},
    )


def build_model_catalog(*, tenant_id: int) -> ModelCatalog:
    """One tenant's catalog, composed afresh (the policy test console); the gateway keeps its own in its snapshot."""
    return model_catalog_compose(build_models_by_id(), build_model_grants(tenant_id=tenant_id))
