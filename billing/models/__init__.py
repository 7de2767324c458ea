"""billing's models, one module per topic; each is imported here so Django registers it."""

from billing.models.ledger import COST_FIELD, CacheStatus, ImmutableRowError, UsageRecord

__all__ = ["COST_FIELD", "CacheStatus", "ImmutableRowError", "UsageRecord"]
