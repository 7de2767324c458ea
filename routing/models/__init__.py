"""routing's models, one module per topic; each is imported here so Django registers it."""

from routing.models.catalog import PRICE_FIELD, Model, Provider, ProviderKind, TenantModelAccess

__all__ = ["PRICE_FIELD", "Model", "Provider", "ProviderKind", "TenantModelAccess"]
