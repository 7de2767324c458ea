"""billing's models, one module per topic; each is imported here so Django registers it."""

from billing.models.alerts import (
    AlertChannel,
    AlertDelivery,
    Anomaly,
    AnomalyDirection,
    AnomalyMetric,
    AnomalyWindow,
    BudgetAlert,
    ChannelKind,
    DeliveryStatus,
)
from billing.models.budgets import (
    DEFAULT_THRESHOLDS,
    Budget,
    BudgetAction,
    BudgetCounter,
    BudgetPeriod,
    BudgetScope,
    RateLimit,
    RateLimitScope,
)
from billing.models.exports import ExportStatus, UsageExport
from billing.models.ledger import (
    COST_FIELD,
    CUSTOMER_MAX_LENGTH,
    REQUEST_ROWS,
    ROUTING_HINT_MAX_LENGTH,
    CacheStatus,
    ImmutableRowError,
    UsageKind,
    UsageRecord,
)
from billing.models.rollups import RollupCursor, UsageCustomerRollupHourly, UsageRollupDaily, UsageRollupHourly

__all__ = [
    "COST_FIELD",
    "CUSTOMER_MAX_LENGTH",
    "DEFAULT_THRESHOLDS",
    "REQUEST_ROWS",
    "ROUTING_HINT_MAX_LENGTH",
    "AlertChannel",
    "AlertDelivery",
    "Anomaly",
    "AnomalyDirection",
    "AnomalyMetric",
    "AnomalyWindow",
    "Budget",
    "BudgetAction",
    "BudgetAlert",
    "BudgetCounter",
    "BudgetPeriod",
    "BudgetScope",
    "CacheStatus",
    "ChannelKind",
    "DeliveryStatus",
    "ExportStatus",
    "ImmutableRowError",
    "RateLimit",
    "RateLimitScope",
    "RollupCursor",
    "UsageCustomerRollupHourly",
    "UsageExport",
    "UsageKind",
    "UsageRecord",
    "UsageRollupDaily",
    "UsageRollupHourly",
]
