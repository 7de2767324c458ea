"""Which configuration versions a committed change moves, and what a process serves after it, with Redis and without."""

import asyncio
from decimal import Decimal

import pytest
from django.db import transaction
from redis.exceptions import ConnectionError as RedisConnectionError

from billing.budgets.services import budget_create
from core.db import database_sync_to_async
from core.redis import sync_redis
from llmops.gateway.snapshot import (
    KEYS_SCOPE,
    REDIS_VERSION_PREFIX,
    SHARED_SCOPE,
    ConfigCache,
    config_versions_read,
    tenant_scope,
)
from routing.services import tenant_model_access_set
from tenants.authentication import ApiKeyAuthentication, InvalidApiKey
from tenants.keys import parse_key
from tenants.services import api_key_create, api_key_revoke
from tests.conftest import _close_other_connections
from tests.factories import ModelFactory, TeamFactory, TenantFactory


@pytest.fixture(params=["redis", "database"])
def versions_backend(request, settings, transactional_db):
    """Every test runs against the Redis versions and the database ones (the embedded default, no REDIS_URL)."""
    if request.param == "redis" and not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    if request.param == "database":
        settings.REDIS_URL = ""
    yield request.param
    # Loads ran on worker threads whose connections outlive them; the test database must be droppable.
    _close_other_connections()


def read(*scopes: str) -> list[str | None]:
    return asyncio.run(config_versions_read(list(scopes)))


def test_a_change_to_one_tenant_moves_that_tenant_s_version_only(versions_backend):
    acme, globex = TenantFactory(slug="acme"), TenantFactory(slug="globex")
    before = read(SHARED_SCOPE, KEYS_SCOPE, tenant_scope(acme.pk), tenant_scope(globex.pk))

    budget_create(tenant=acme, limit_usd=Decimal("5"))

    after = read(SHARED_SCOPE, KEYS_SCOPE, tenant_scope(acme.pk), tenant_scope(globex.pk))
    assert after[2] != before[2]
    assert [after[0], after[1], after[3]] == [before[0], before[1], before[3]]


def test_a_new_key_moves_its_tenant_and_the_keys_version_and_a_model_the_shared_one(versions_backend):
    team = TeamFactory()
    before = read(SHARED_SCOPE, KEYS_SCOPE, tenant_scope(team.tenant_id))

    api_key_create(team=team)
    after_key = read(SHARED_SCOPE, KEYS_SCOPE, tenant_scope(team.tenant_id))
    ModelFactory()
    after_model = read(SHARED_SCOPE, KEYS_SCOPE, tenant_scope(team.tenant_id))

    assert after_key[0] == before[0] and after_key[1] != before[1] and after_key[2] != before[2]
    assert after_model[0] != after_key[0] and after_model[1:] == after_key[1:]


def test_a_model_granted_from_the_model_s_side_moves_the_tenant_s_version(versions_backend):
    tenant, model = TenantFactory(), ModelFactory()
    access = tenant_model_access_set(tenant=tenant, allowed_models=[], default_model=None)
    before = read(tenant_scope(tenant.pk))

    model.allowed_for.add(access)

    assert read(tenant_scope(tenant.pk)) != before


def test_the_version_moves_only_when_the_change_commits(versions_backend):
    tenant = TenantFactory()
    before = read(tenant_scope(tenant.pk))
    with transaction.atomic():
        budget_create(tenant=tenant, limit_usd=Decimal("5"))
        assert read(tenant_scope(tenant.pk)) == before
    assert read(tenant_scope(tenant.pk)) != before


def test_a_process_serves_a_committed_change_from_the_next_request(versions_backend):
    team = TeamFactory()
    api_key, _ = api_key_create(team=team)
    cache = ConfigCache()

    before = asyncio.run(cache.for_tenant(team.tenant_id))
    again = asyncio.run(cache.for_tenant(team.tenant_id))
    api_key_revoke(api_key=api_key)
    after = asyncio.run(cache.for_tenant(team.tenant_id))

    assert again is before  # unchanged: nothing reloaded
    assert before.keys[api_key.prefix].revoked_at is None
    assert after.keys[api_key.prefix].revoked_at is not None


def test_with_redis_unreachable_changes_still_save_and_every_request_reads_the_database(settings, transactional_db):
    team = TeamFactory()
    api_key, _ = api_key_create(team=team)
    cache = ConfigCache()
    before = asyncio.run(cache.for_tenant(team.tenant_id))
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    api_key_revoke(api_key=api_key)
    during = asyncio.run(cache.for_tenant(team.tenant_id))

    assert before.keys[api_key.prefix].revoked_at is None
    assert during.keys[api_key.prefix].revoked_at is not None
    _close_other_connections()


@pytest.fixture
def redis_versions(settings, transactional_db):
    """For reads started ahead of the view, which only Redis serves."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    yield settings
    _close_other_connections()


def test_a_read_started_ahead_serves_what_for_key_serves_and_a_change_committed_before_it(redis_versions):
    team = TeamFactory()
    api_key, raw_key = api_key_create(team=team)
    cache = ConfigCache()

    async def served() -> tuple:
        unloaded = cache.read_start(raw_key)
        before = await cache.for_key(raw_key)
        started = cache.read_start(raw_key)
        ahead = await cache.for_key(raw_key, started=started)
        await database_sync_to_async(api_key_revoke)(api_key=api_key)
        after = await cache.for_key(raw_key, started=cache.read_start(raw_key))
        return unloaded, started, before, ahead, after

    unloaded, started, before, ahead, after = asyncio.run(served())

    assert unloaded is None  # the tenant was not loaded yet: for_key reads what it needs itself
    assert started.tenant_id == team.tenant_id
    assert ahead is before
    assert after.keys[api_key.prefix].revoked_at is not None


def test_for_key_runs_on_the_versions_the_started_read_brought(redis_versions):
    team = TeamFactory()
    _, raw_key = api_key_create(team=team)
    cache = ConfigCache()

    async def served() -> tuple:
        await cache.for_key(raw_key)
        started = cache.read_start(raw_key)
        await started.reply
        # As if the versions had moved just before the request arrived: the snapshot is loaded under them.
        started.reply = asyncio.get_running_loop().create_future()
        started.reply.set_result([b"shared-at-arrival", b"tenant-at-arrival"])
        await cache.for_key(raw_key, started=started)
        return cache._shared.version, cache._tenants[team.tenant_id].version

    assert asyncio.run(served()) == ("shared-at-arrival", "tenant-at-arrival")


def test_a_read_started_for_another_key_is_dropped(redis_versions):
    acme, globex = TeamFactory(), TeamFactory()
    _, acme_key = api_key_create(team=acme)
    _, globex_key = api_key_create(team=globex)
    cache = ConfigCache()

    async def served() -> tuple:
        await cache.for_key(acme_key)
        await cache.for_key(globex_key)
        started = cache.read_start(acme_key)
        return started, await cache.for_key(globex_key, started=started)

    started, snapshot = asyncio.run(served())

    assert started.reply.cancelled()
    assert {principal.tenant_id for principal in snapshot.keys.values()} == {globex.tenant_id}


def test_nothing_is_started_ahead_for_a_key_the_loaded_slice_refuses(redis_versions):
    team = TeamFactory()
    _, raw_key = api_key_create(team=team)
    revoked, revoked_key = api_key_create(team=team)
    api_key_revoke(api_key=revoked)
    secret = parse_key(raw_key).secret
    wrong = raw_key.removesuffix(secret) + "0" * len(secret)
    cache = ConfigCache()

    async def started() -> tuple:
        await cache.for_key(raw_key)
        return cache.read_start(wrong), cache.read_start(revoked_key), cache.read_start(raw_key) is not None

    assert asyncio.run(started()) == (None, None, True)


def test_a_read_started_ahead_that_fails_loads_from_the_database_as_for_key_does(redis_versions):
    settings = redis_versions
    team = TeamFactory()
    api_key, raw_key = api_key_create(team=team)
    cache = ConfigCache()
    url = settings.REDIS_URL

    async def served() -> tuple:
        before = await cache.for_key(raw_key)
        started = cache.read_start(raw_key)
        # Revoked from a process that cannot reach Redis: not announced, so only a load from the database sees it.
        settings.REDIS_URL = "redis://127.0.0.1:1/0"
        await database_sync_to_async(api_key_revoke)(api_key=api_key)
        settings.REDIS_URL = url
        await started.reply
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(RedisConnectionError("Connection closed by server."))
        started.reply = failed
        return before, await cache.for_key(raw_key, started=started)

    before, after = asyncio.run(served())

    assert before.keys[api_key.prefix].revoked_at is None
    assert after.keys[api_key.prefix].revoked_at is not None


def lose_versions() -> None:
    """What a Redis restart without AOF, a FLUSHALL or a failover to a replica that lacked them does to the versions."""
    client = sync_redis()
    client.delete(*client.keys(f"{REDIS_VERSION_PREFIX}*"))


def test_a_version_lost_in_redis_forces_a_reload_of_what_was_loaded_while_it_was_missing(redis_versions):
    team = TeamFactory()
    api_key, raw_key = api_key_create(team=team)
    cache = ConfigCache()
    lose_versions()

    async def served() -> tuple:
        before = await cache.for_key(raw_key)
        await database_sync_to_async(api_key_revoke)(api_key=api_key)
        lose_versions()
        # The slice still held accepts the key, so its versions are asked ahead, and found missing.
        started = cache.read_start(raw_key)
        return before, started, await cache.for_key(raw_key, started=started)

    before, started, after = asyncio.run(served())

    assert ApiKeyAuthentication(before.keys).principal_for(raw_key).tenant_id == team.tenant_id
    assert started is not None
    with pytest.raises(InvalidApiKey):
        ApiKeyAuthentication(after.keys).principal_for(raw_key)


def test_readers_that_find_a_version_missing_together_share_the_first_token_set(redis_versions):
    scope = tenant_scope(TenantFactory().pk)
    lose_versions()

    async def race() -> list:
        return await asyncio.gather(config_versions_read([scope]), config_versions_read([scope]))

    first, second = asyncio.run(race())

    assert first == second == [sync_redis().get(REDIS_VERSION_PREFIX + scope).decode()]


def test_nothing_is_started_ahead_without_redis(settings, transactional_db):
    settings.REDIS_URL = ""
    team = TeamFactory()
    _, raw_key = api_key_create(team=team)
    cache = ConfigCache()

    async def started():
        await cache.for_key(raw_key)
        return cache.read_start(raw_key), cache.read_start("not-a-key")

    assert asyncio.run(started()) == (None, None)
    _close_other_connections()
