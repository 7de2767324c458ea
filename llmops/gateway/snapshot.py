"""The configuration the request path needs (keys, models, prices, policies, budgets, limits), in memory.

A request reads the snapshot and runs no configuration query. Any saved change to the
configuration bumps ``ConfigVersion`` when its transaction commits; each process checks that
counter at most once every LLMOPS_SNAPSHOT_CHECK_SECONDS and rebuilds when it moved, so a
change made in the admin or a management command reaches every process within that interval.
"""

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, post_save

from billing.budgets.index import BudgetIndex, RateLimitIndex, build_budget_index, build_rate_limit_index
from billing.models import Budget, RateLimit
from llmops.db import database_sync_to_async
from llmops.gateway.models import ConfigVersion
from routing.catalog import ModelCatalog, build_model_catalog
from routing.models import Model, Provider, RoutingPolicy, RoutingPolicyVersion, TenantModelAccess
from routing.policy import CompiledPolicy, build_live_policies
from tenants.authentication import KeyPrincipal, build_key_index
from tenants.models import ApiKey, PayloadLogSettings, Team, Tenant

logger = logging.getLogger(__name__)

SNAPSHOT_MODELS = (
    Tenant,
    Team,
    ApiKey,
    Provider,
    Model,
    TenantModelAccess,
    RoutingPolicy,
    RoutingPolicyVersion,
    Budget,
    RateLimit,
    PayloadLogSettings,
)
CONFIG_VERSION_ID = 1


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    version: int
    keys: dict[str, KeyPrincipal]
    catalog: ModelCatalog
    policies: dict[int, CompiledPolicy]
    budgets: BudgetIndex
    rate_limits: RateLimitIndex
    payload_logging_tenants: frozenset[int]


def _read_version() -> int:
    return ConfigVersion.objects.filter(pk=CONFIG_VERSION_ID).values_list("version", flat=True).first() or 0


class SnapshotHolder:
    def __init__(self):
        self._snapshot: ConfigSnapshot | None = None
        self._checked_at = 0.0
        # Bumped by every local change; a snapshot built before the latest bump is stale.
        self._generation = 0
        self._built_generation = -1
        self._refresh_lock = threading.Lock()

    @property
    def current(self) -> ConfigSnapshot:
        if self._snapshot is None:
            raise RuntimeError("configuration snapshot not loaded; await ensure_fresh() first")
        return self._snapshot

    def mark_stale(self) -> None:
        """Rebuild before the next request: this process changed the configuration itself."""
        self._generation += 1

    async def ensure_fresh(self) -> ConfigSnapshot:
        now = time.monotonic()
        if self._built_generation != self._generation:
            # A known change: every request waits for the rebuild rather than run on what it replaces.
            await database_sync_to_async(self.refresh)()
        elif now - self._checked_at >= settings.LLMOPS_SNAPSHOT_CHECK_SECONDS:
            # Claim the periodic check first, so concurrent requests keep using the snapshot they have.
            self._checked_at = now
            await database_sync_to_async(self.refresh)()
        return self._snapshot

    def refresh(self) -> ConfigSnapshot:
        with self._refresh_lock:
            # Generation and version are taken before the data, so a change made mid-build triggers another build.
            generation = self._generation
            version = _read_version()
            if self._built_generation != generation or self._snapshot.version != version:
                self._snapshot = ConfigSnapshot(
                    version=version,
                    keys=build_key_index(),
                    catalog=build_model_catalog(),
                    policies=build_live_policies(),
                    budgets=build_budget_index(),
                    rate_limits=build_rate_limit_index(),
                    payload_logging_tenants=frozenset(
                        PayloadLogSettings.objects.filter(enabled=True).values_list("tenant_id", flat=True)
                    ),
                )
                self._built_generation = generation
                self._checked_at = time.monotonic()
                logger.info("configuration snapshot loaded at version %s", version)
            return self._snapshot


config_snapshot = SnapshotHolder()


def config_version_bump() -> None:
    updated = ConfigVersion.objects.filter(pk=CONFIG_VERSION_ID).update(version=F("version") + 1)
    if not updated:
        ConfigVersion.objects.get_or_create(pk=CONFIG_VERSION_ID, defaults={"version": 1})
    config_snapshot.mark_stale()


def _on_config_change(sender, **kwargs):
    transaction.on_commit(config_version_bump)


def connect_invalidation_signals() -> None:
    for model in SNAPSHOT_MODELS:
        post_save.connect(_on_config_change, sender=model, dispatch_uid=f"snapshot-save-{model.__name__}")
        post_delete.connect(_on_config_change, sender=model, dispatch_uid=f"snapshot-delete-{model.__name__}")
    m2m_changed.connect(
        _on_config_change, sender=TenantModelAccess.allowed_models.through, dispatch_uid="snapshot-m2m-access"
    )
