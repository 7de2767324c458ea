"""The configuration the request path needs, in memory per tenant, and never stale.

The configuration is held in slices: one shared by every tenant (providers, models and prices) and one per tenant
(its keys with their team's and tenant's state, model access, live routing policy, budgets, rate limits, payload
logging, shadow-evaluation sample rates, its cap on requests in flight). A change bumps the version of the slice it
belongs to once its transaction commits (``transaction.on_commit``): a fresh random token in Redis
(``llmops:config:<scope>``), or a counter row (``ConfigVersion``) in the database without Redis. A version key Redis
does not hold (its scope never changed, or the key was lost: a restart without AOF, FLUSHALL, a failover) is set to a
fresh token by the read that finds it missing (SET NX, so concurrent readers share the first one; one more round trip,
in that case only). No slice is held under a missing version, which a lost key would read as again however the data
had moved since: a lost version forces a reload. A counter row, kept with the data it versions, is missing only until
its scope's first change.

Every request reads the shared version and its tenant's version in one round trip (MGET; one query without Redis)
and runs on slices loaded under exactly those versions. The chat completion asks for them once its body has arrived
(``read_start``), so the round trip overlaps building the request and validating its body. A slice whose version
moved is reloaded before the request goes on, and only that slice: a change to one tenant costs the other tenants
nothing, and applying it costs the same at any number of tenants. Concurrent requests of a tenant share one load of
each version per process. A load is keyed by the version its requests read *before* it reads the data, so a change
that commits during a load is caught by the next request (its bump gives a new version), never stored under the
version it replaced.

A price version can be saved ahead of the moment it takes effect, when nothing is saved to bump a version: the
shared slice holds the moment its first upcoming price version takes effect, and a request from that moment on
reloads it (once per process), so the new prices apply from their first second without a schedule or a query per
request.

A key prefix no loaded slice knows (a brand-new key) is looked up in the database once, under the ``keys`` version
that every key creation bumps; an unknown prefix stays refused without a query until a key is created.
If Redis cannot be read, the process forgets every slice and each request loads its own from the database.
A change saved while Redis is unreachable from the saving process is committed but not announced (logged at
ERROR): save it again once Redis is back.
"""

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.utils import timezone
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from billing.budgets.index import BudgetEntry, BudgetIndex, RateLimitIndex, build_budget_index, build_rate_limit_index
from billing.models import Budget, EvaluationSettings, RateLimit
from core.db import database_sync_to_async
from core.redis import async_redis, redis_command_queued, sync_redis
from llmops.gateway.models import ConfigVersion
from llmops.gateway.shadow.rates import EvaluationRates, build_evaluation_rates
from routing.catalog import (
    ModelCatalog,
    ModelEntry,
    ModelGrant,
    build_model_grants,
    build_models_by_id,
    model_catalog_compose,
    next_price_change,
)
from routing.models import Model, ModelPrice, Provider, RoutingPolicy, RoutingPolicyVersion, TenantModelAccess
from routing.policy import CompiledPolicy, build_live_policies
from tenants.authentication import ApiKeyAuthentication, InvalidApiKey, KeyPrincipal, build_key_index, key_tenant_id
from tenants.keys import parse_key
from tenants.models import ApiKey, PayloadLogSettings, Team, Tenant

logger = logging.getLogger(__name__)

SHARED_SCOPE = "shared"
KEYS_SCOPE = "keys"
REDIS_VERSION_PREFIX = "llmops:config:"
# Unknown prefixes remembered as refused; past this many the memory is dropped rather than grown.
MAX_UNKNOWN_PREFIXES = 10_000

SHARED_MODELS = (Provider, Model, ModelPrice)
TENANT_MODELS = (
    Team,
    ApiKey,
    TenantModelAccess,
    RoutingPolicy,
    RoutingPolicyVersion,
    Budget,
    RateLimit,
    PayloadLogSettings,
    EvaluationSettings,
)


def tenant_scope(tenant_id: int) -> str:
    return f"tenant:{tenant_id}"


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """One tenant's view of the configuration, what a request runs on: the indexes hold that tenant only."""

    keys: dict[str, KeyPrincipal]
    catalog: ModelCatalog
    policies: dict[int, CompiledPolicy]
    budgets: BudgetIndex
    rate_limits: RateLimitIndex
    payload_logging_tenants: frozenset[int]
    # The tenant's cap on chat completions in flight; None: the installation default, 0: no cap.
    max_inflight: int | None
    # The tenant's shadow-evaluation sample rates; None when it does not evaluate.
    evaluation: EvaluationRates | None = None


@dataclass(frozen=True, slots=True)
class SharedSlice:
    version: str | None
    models_by_id: dict[int, ModelEntry]
    # When a price version of one of its models takes effect: the slice is stale from then on, at the same version.
    prices_change_at: datetime | None = None

    def is_stale(self) -> bool:
        # The clock is read only when a price is upcoming: a warm request without one pays an attribute check.
        return self.prices_change_at is not None and timezone.now() >= self.prices_change_at


@dataclass(frozen=True, slots=True)
class TenantSlice:
    tenant_id: int
    version: str | None
    keys: dict[str, KeyPrincipal]
    grant: ModelGrant | None
    policy: CompiledPolicy | None
    budgets: tuple[BudgetEntry, ...]
    rate_limits: RateLimitIndex
    payload_logging: bool
    max_inflight: int | None
    evaluation: EvaluationRates | None = None

    def snapshot(self, shared: SharedSlice) -> ConfigSnapshot:
        grants = {self.tenant_id: self.grant} if self.grant is not None else {}
        return ConfigSnapshot(
            keys=self.keys,
            catalog=model_catalog_compose(shared.models_by_id, grants),
            policies={self.tenant_id: self.policy} if self.policy is not None else {},
            budgets=BudgetIndex(by_tenant={self.tenant_id: self.budgets} if self.budgets else {}),
            rate_limits=self.rate_limits,
            payload_logging_tenants=frozenset({self.tenant_id}) if self.payload_logging else frozenset(),
            max_inflight=self.max_inflight,
            evaluation=self.evaluation,
        )


def shared_slice_build(*, version: str | None) -> SharedSlice:
    now = timezone.now()
    return SharedSlice(
        version=version, models_by_id=build_models_by_id(at=now), prices_change_at=next_price_change(after=now)
    )


def tenant_slice_build(*, tenant_id: int, version: str | None) -> TenantSlice:
    """The tenant's configuration as it is now; a deleted tenant is an empty slice (its keys are refused)."""
    return TenantSlice(
        tenant_id=tenant_id,
        version=version,
        keys=build_key_index(tenant_id=tenant_id),
        grant=build_model_grants(tenant_id=tenant_id).get(tenant_id),
        policy=build_live_policies(tenant_id=tenant_id).get(tenant_id),
        budgets=build_budget_index(tenant_id=tenant_id).by_tenant.get(tenant_id, ()),
        rate_limits=build_rate_limit_index(tenant_id=tenant_id),
        payload_logging=PayloadLogSettings.objects.for_tenant(tenant_id).filter(enabled=True).exists(),
        max_inflight=Tenant.objects.for_tenant(tenant_id).values_list("max_inflight_requests", flat=True).first(),
        evaluation=build_evaluation_rates(tenant_id=tenant_id),
    )


class VersionsUnreadable(Exception):
    """Redis holds the versions and cannot be read."""


async def config_versions_read(scopes: list[str]) -> list[str | None]:
    """The current version of each scope: one MGET in Redis (and one more round trip when a version key is missing),
    or one query without Redis."""
    client = async_redis()
    if client is None:
        return await database_sync_to_async(_database_versions)(scopes)
    keys = _version_keys(scopes)
    return await _versions_received(client, keys, redis_command_queued(client, "MGET", *keys))


def _version_keys(scopes: list[str]) -> list[str]:
    return [REDIS_VERSION_PREFIX + scope for scope in scopes]


async def _versions_received(client: aioredis.Redis, keys: list[str], reply: asyncio.Future) -> list[str]:
    """The versions of ``keys`` from ``reply``, their MGET; a missing one is given a token (``_versions_given``)."""
    try:
        values = await reply
        if None in values:
            return await _versions_given(client, keys, values)
    except RedisError as exc:
        raise VersionsUnreadable(str(exc)) from exc
    return [value.decode() for value in values]


async def _versions_given(client: aioredis.Redis, keys: list[str], values: list[bytes | None]) -> list[str]:
    """``values`` with a fresh token set for each key they miss, unless another reader's was set first (SET NX): the
    token that holds is read back in the same round trip. Ours stands if the key is lost again in between."""
    tokens = {key: secrets.token_hex(8) for key, value in zip(keys, values, strict=True) if value is None}
    *_, held = await asyncio.gather(
        *(redis_command_queued(client, "SET", key, token, "NX") for key, token in tokens.items()),
        redis_command_queued(client, "MGET", *tokens),
    )
    given = {key: value.decode() if value is not None else tokens[key] for key, value in zip(tokens, held, strict=True)}
    return [value.decode() if value is not None else given[key] for key, value in zip(keys, values, strict=True)]


@dataclass(slots=True)
class StartedRead:
    """The versions ``ConfigCache.for_key`` needs for one key, asked of Redis ahead of it (``read_start``)."""

    prefix: str
    tenant_id: int
    client: aioredis.Redis
    reply: asyncio.Future

    def cancel(self) -> None:
        """Not needed after all: the reply, or its failure, is left unread (a failure cancelled, even once done, is
        not logged as never retrieved)."""
        self.reply.cancel()


def _database_versions(scopes: list[str]) -> list[str | None]:
    found = dict(ConfigVersion.objects.filter(scope__in=scopes).values_list("scope", "version"))
    return [str(found[scope]) if scope in found else None for scope in scopes]


def config_versions_bump(scopes: set[str]) -> None:
    """Give each scope a new version. Called once the change has committed, so a load under the new version
    cannot read the data from before it."""
    client = sync_redis()
    if client is None:
        for scope in sorted(scopes):
            _database_version_bump(scope)
        return
    pipeline = client.pipeline(transaction=False)
    for scope in scopes:
        pipeline.set(REDIS_VERSION_PREFIX + scope, secrets.token_hex(8))
    try:
        pipeline.execute()
    except RedisError:
        # The change is committed; raising would not undo it. Gateways that lose Redis too reload everything.
        logger.exception(
            "configuration change to %s saved but not announced (Redis unreachable): save it again once Redis is back",
            ", ".join(sorted(scopes)),
        )


def _database_version_bump(scope: str) -> None:
    if ConfigVersion.objects.filter(scope=scope).update(version=F("version") + 1):
        return
    try:
        with transaction.atomic():
            ConfigVersion.objects.create(scope=scope, version=1)
    except IntegrityError:
        ConfigVersion.objects.filter(scope=scope).update(version=F("version") + 1)


class ConfigCache:
    """This process's slices, each under the version it was loaded at."""

    def __init__(self):
        self._shared: SharedSlice | None = None
        self._tenants: dict[int, TenantSlice] = {}
        # Tenant id → the snapshot composed of the two slices it names, so a warm request composes nothing.
        self._snapshots: dict[int, tuple[SharedSlice, TenantSlice, ConfigSnapshot]] = {}
        self._tenant_of_prefix: dict[str, int] = {}
        self._unknown_prefixes: dict[str, str | None] = {}
        self._loading: dict[tuple, asyncio.Task] = {}

    def read_start(self, raw_key: str) -> StartedRead | None:
        """Ask Redis now, with this turn's other commands, for the versions ``for_key(raw_key)`` will read: awaited
        there, after work that needs no configuration (building the request, validating its body), the round trip
        overlaps that work. None when nothing can be asked ahead: no Redis, a key whose tenant this process has
        not loaded (``for_key`` then reads what it needs itself), or a key the loaded slice refuses (a wrong secret,
        revoked, expired, a disabled team or tenant), so a caller who is most likely refused gets no work done ahead
        of its authentication."""
        parsed = parse_key(raw_key)
        tenant_id = self._tenant_of_prefix.get(parsed.prefix) if parsed is not None else None
        client = async_redis()
        loaded = self._tenants.get(tenant_id) if tenant_id is not None else None
        if loaded is None or client is None:
            return None
        try:
            ApiKeyAuthentication(loaded.keys).principal_for(raw_key)
        except InvalidApiKey:
            return None
        reply = redis_command_queued(client, "MGET", *_version_keys([SHARED_SCOPE, tenant_scope(tenant_id)]))
        return StartedRead(prefix=parsed.prefix, tenant_id=tenant_id, client=client, reply=reply)

    async def for_key(self, raw_key: str, *, started: StartedRead | None = None) -> ConfigSnapshot | None:
        """The configuration of the tenant the key belongs to, or None when no tenant has such a key. ``started``:
        its versions as ``read_start`` asked for them before the request was built (dropped if for another key)."""
        parsed = parse_key(raw_key)
        if started is not None and (parsed is None or started.prefix != parsed.prefix):
            started.cancel()
            started = None
        if parsed is None:
            return None
        if started is not None:
            versions = await self._versions([SHARED_SCOPE, tenant_scope(started.tenant_id)], started=started)
            return await self._snapshot(started.tenant_id, *versions)
        tenant_id = self._tenant_of_prefix.get(parsed.prefix)
        if tenant_id is not None:
            return await self.for_tenant(tenant_id)
        return await self._for_unknown_prefix(parsed.prefix)

    async def for_tenant(self, tenant_id: int) -> ConfigSnapshot:
        shared_version, tenant_version = await self._versions([SHARED_SCOPE, tenant_scope(tenant_id)])
        return await self._snapshot(tenant_id, shared_version, tenant_version)

    async def _versions(self, scopes: list[str], *, started: StartedRead | None = None) -> list[str | None]:
        """The scopes' versions, read now or from ``started`` (their MGET, sent earlier)."""
        try:
            if started is None:
                return await config_versions_read(scopes)
            return await _versions_received(started.client, _version_keys(scopes), started.reply)
        except VersionsUnreadable as exc:
            # Nothing held can be vouched for, now or after Redis returns (a change may go unannounced meanwhile):
            # forget it all, and load what this request needs under a version no slice has.
            logger.warning("configuration versions unreadable in Redis (%s); loading from the database", exc)
            self._shared, self._tenants, self._snapshots = None, {}, {}
            self._tenant_of_prefix, self._unknown_prefixes = {}, {}
            return [f"unverified-{secrets.token_hex(8)}" for _ in scopes]

    async def _for_unknown_prefix(self, prefix: str) -> ConfigSnapshot | None:
        shared_version, keys_version = await self._versions([SHARED_SCOPE, KEYS_SCOPE])
        if prefix in self._unknown_prefixes and self._unknown_prefixes[prefix] == keys_version:
            return None
        tenant_id = await database_sync_to_async(key_tenant_id)(prefix=prefix)
        if tenant_id is None:
            if len(self._unknown_prefixes) >= MAX_UNKNOWN_PREFIXES:
                self._unknown_prefixes.clear()
            self._unknown_prefixes[prefix] = keys_version
            return None
        # Read after the key was found, so the tenant's slice is loaded from data that holds the key.
        (tenant_version,) = await self._versions([tenant_scope(tenant_id)])
        return await self._snapshot(tenant_id, shared_version, tenant_version)

    async def _snapshot(self, tenant_id: int, shared_version: str | None, tenant_version: str | None):
        shared = self._shared
        if shared is None or shared.version != shared_version:
            shared = await self._load((SHARED_SCOPE, shared_version), shared_slice_build, version=shared_version)
        while shared.is_stale():
            # A price version took effect since the slice was built: no change was saved, so no version moved.
            # Keyed by that moment, so the requests that join the load are answered from data read after it.
            shared = await self._load(
                (SHARED_SCOPE, shared_version, shared.prices_change_at), shared_slice_build, version=shared_version
            )
        tenant = self._tenants.get(tenant_id)
        if tenant is None or tenant.version != tenant_version:
            tenant = await self._load(
                (tenant_scope(tenant_id), tenant_version),
                tenant_slice_build,
                tenant_id=tenant_id,
                version=tenant_version,
            )
        composed = self._snapshots.get(tenant_id)
        if composed is not None and composed[0] is shared and composed[1] is tenant:
            return composed[2]
        snapshot = tenant.snapshot(shared)
        self._snapshots[tenant_id] = (shared, tenant, snapshot)
        return snapshot

    async def _load(self, key: tuple, build: Callable, **kwargs):
        """One load per slice and version in this process; the requests that read the same version await it."""
        loop = asyncio.get_running_loop()
        flight = (loop, *key)
        task = self._loading.get(flight)
        if task is None:
            task = loop.create_task(database_sync_to_async(build)(**kwargs))
            self._loading[flight] = task
            task.add_done_callback(lambda done: self._loaded(flight, done))
        # Shielded: a client that goes away does not cancel the load the other requests wait for.
        return await asyncio.shield(task)

    def _loaded(self, flight: tuple, task: asyncio.Task) -> None:
        self._loading.pop(flight, None)
        if task.cancelled() or task.exception() is not None:
            return
        loaded = task.result()
        if isinstance(loaded, SharedSlice):
            self._shared = loaded
            return
        previous = self._tenants.get(loaded.tenant_id)
        for prefix in previous.keys if previous is not None else ():
            if prefix not in loaded.keys:
                self._tenant_of_prefix.pop(prefix, None)
        self._tenants[loaded.tenant_id] = loaded
        for prefix in loaded.keys:
            self._tenant_of_prefix[prefix] = loaded.tenant_id
        logger.debug("configuration of tenant %s loaded at version %s", loaded.tenant_id, loaded.version)


config_snapshot = ConfigCache()


def _scopes_of(instance) -> set[str]:
    if isinstance(instance, SHARED_MODELS):
        return {SHARED_SCOPE}
    if isinstance(instance, Tenant):
        return {tenant_scope(instance.pk)}
    return {tenant_scope(instance.tenant_id)}


def _announce(scopes: set[str]) -> None:
    if scopes:
        transaction.on_commit(lambda: config_versions_bump(scopes))


def _on_save(sender, instance, created=False, **kwargs):
    scopes = _scopes_of(instance)
    if created and isinstance(instance, ApiKey):
        scopes.add(KEYS_SCOPE)
    _announce(scopes)


def _on_delete(sender, instance, **kwargs):
    _announce(_scopes_of(instance))


def _on_access_change(sender, instance, action, reverse, pk_set, **kwargs):
    """A tenant's allowed models changed: from its TenantModelAccess, or from a model's side (``reverse``)."""
    if not reverse:
        if action.startswith("post_"):
            _announce({tenant_scope(instance.tenant_id)})
        return
    # Unscoped, reviewed: a catalog model's grants span tenants; only their ids are read, to announce their changes.
    grants = TenantModelAccess.objects.unscoped()
    if action == "pre_clear":
        tenant_ids = grants.filter(allowed_models=instance).values_list("tenant_id", flat=True)
    elif action in ("post_add", "post_remove"):
        tenant_ids = grants.filter(pk__in=pk_set).values_list("tenant_id", flat=True)
    else:
        return
    _announce({tenant_scope(tenant_id) for tenant_id in tenant_ids})


def connect_invalidation_signals() -> None:
    for model in (*SHARED_MODELS, Tenant, *TENANT_MODELS):
        post_save.connect(_on_save, sender=model, dispatch_uid=f"config-save-{model.__name__}")
        post_delete.connect(_on_delete, sender=model, dispatch_uid=f"config-delete-{model.__name__}")
    m2m_changed.connect(
        _on_access_change, sender=TenantModelAccess.allowed_models.through, dispatch_uid="config-m2m-access"
    )
