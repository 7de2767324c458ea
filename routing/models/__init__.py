"""routing's models, one module per topic; each is imported here so Django registers it."""

from routing.models.cache import CacheEntry, CacheEntryKind
from routing.models.catalog import (
    PRICE_FIELD,
    PRICE_FIELDS,
    Model,
    ModelKind,
    ModelPrice,
    Provider,
    ProviderKind,
    TenantModelAccess,
)
from routing.models.policies import (
    InjectionGuardAction,
    OverCapAction,
    ProviderCache,
    RoutingAlias,
    RoutingPolicy,
    RoutingPolicyAudit,
    RoutingPolicyAuditAction,
    RoutingPolicyVersion,
    RoutingRule,
)

__all__ = [
    "PRICE_FIELD",
    "PRICE_FIELDS",
    "CacheEntry",
    "CacheEntryKind",
    "InjectionGuardAction",
    "Model",
    "ModelKind",
    "ModelPrice",
    "OverCapAction",
    "Provider",
    "ProviderCache",
    "ProviderKind",
    "RoutingAlias",
    "RoutingPolicy",
    "RoutingPolicyAudit",
    "RoutingPolicyAuditAction",
    "RoutingPolicyVersion",
    "RoutingRule",
    "TenantModelAccess",
]
