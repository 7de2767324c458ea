"""Purging: the command and the admin, scoped to one tenant, clearing Redis so a purged answer is not served."""

import logging
import socket
import threading
import time
from datetime import timedelta

import pytest
import redis
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from core.redis import sync_redis
from routing.cache import store
from routing.cache.store import (
    CachePurgeIncomplete,
    cache_entries_purge,
    cache_lookup,
    cache_store,
    cache_writes_flush,
    redis_key,
)
from routing.models import CacheEntry
from tenants.models import Membership
from tests.cache.conftest import cache_request, chat, stored_answer
from tests.loops import run

QUESTION = "Which plans include single sign-on?"


def test_cache_purge_command_deletes_one_tenants_entries_by_model_and_age(gateway, acme_caching, globex_caching):
    chat(gateway, acme_caching, QUESTION)
    chat(gateway, acme_caching, QUESTION, model=acme_caching.large.name)
    chat(gateway, globex_caching, QUESTION)

    call_command("cache_purge", "--tenant", "acme", "--older-than", "1")
    assert CacheEntry.objects.unscoped().filter(tenant=acme_caching.tenant).count() == 2
    call_command("cache_purge", "--tenant", "acme", "--model", acme_caching.large.name)
    assert list(
        CacheEntry.objects.unscoped().filter(tenant=acme_caching.tenant).values_list("served_model", flat=True)
    ) == [acme_caching.small.name]
    CacheEntry.objects.unscoped().update(created_at=timezone.now() - timedelta(days=3))
    call_command("cache_purge", "--tenant", "acme", "--older-than", "2")

    assert not CacheEntry.objects.unscoped().filter(tenant=acme_caching.tenant).exists()
    assert CacheEntry.objects.unscoped().filter(tenant=globex_caching.tenant).count() == 1
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "miss"
    assert chat(gateway, globex_caching, QUESTION).headers["x-llmops-cache"] == "hit-exact"


def test_cache_purge_command_refuses_an_unknown_tenant(db):
    with pytest.raises(CommandError, match="no tenant"):
        call_command("cache_purge", "--tenant", "nobody")


def test_a_tenant_admin_sees_and_purges_only_their_entries(gateway, acme_caching, globex_caching, django_user_model):
    chat(gateway, acme_caching, QUESTION)
    chat(gateway, globex_caching, QUESTION)
    cache_writes_flush()
    user = django_user_model.objects.create_user(username="acme-admin", password="pw", is_staff=True)
    Membership.objects.create(user=user, tenant=acme_caching.tenant, role="admin")
    client = Client()
    client.force_login(user)
    changelist = reverse("admin:routing_cacheentry_changelist")

    page = client.get(changelist)
    assert page.status_code == 200
    assert acme_caching.small.name in page.content.decode()
    assert globex_caching.small.name not in page.content.decode()
    globex_entry = CacheEntry.objects.unscoped().get(tenant=globex_caching.tenant)
    assert client.get(reverse("admin:routing_cacheentry_change", args=[globex_entry.pk])).status_code in (302, 403, 404)

    everything = CacheEntry.objects.unscoped().values_list("pk", flat=True)
    client.post(changelist, {"action": "purge_tenant", "_selected_action": list(everything)})
    assert not CacheEntry.objects.unscoped().filter(tenant=acme_caching.tenant).exists()
    assert CacheEntry.objects.unscoped().filter(tenant=globex_caching.tenant).exists()


@pytest.fixture
def stored(acme_caching):
    """One answer of acme's, written to Postgres and Redis; its cache request and Redis key."""
    cache = cache_request(acme_caching, QUESTION)
    cache_store(cache, answer=stored_answer("Business and up."))
    cache_writes_flush()
    key = redis_key(acme_caching.tenant.pk, cache.served_model, cache.key_hash)
    assert sync_redis().exists(key)
    return cache, key


def lookup_from_another_connection(cache):
    """A lookup as another gateway process makes it: on a database connection of its own."""
    found = []

    def look():
        try:
            found.append(run(cache_lookup(cache)))
        finally:
            connection.close()

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    return found[0]


def test_a_lookup_before_the_purge_commits_does_not_bring_the_answer_back(acme_caching, stored):
    cache, key = stored
    with transaction.atomic():
        assert cache_entries_purge(tenant=acme_caching.tenant) == 1
        # Not committed yet: another process still reads the row, and copies it to Redis if Redis lacks it.
        assert lookup_from_another_connection(cache) is not None

    assert not sync_redis().exists(key)
    assert run(cache_lookup(cache)) is None


def test_a_copy_written_back_just_after_the_purge_commits_is_deleted_once_more(acme_caching, stored, monkeypatch):
    cache, key = stored
    monkeypatch.setattr(store, "PURGE_REPEAT_SECONDS", 0.2)
    sealed = sync_redis().get(key)
    cache_entries_purge(tenant=acme_caching.tenant)
    # A lookup that read the row just before the commit writes it back just after.
    sync_redis().set(key, sealed, ex=600)

    deadline = time.monotonic() + 5
    while sync_redis().exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sync_redis().exists(key)
    assert run(cache_lookup(cache)) is None


@pytest.fixture
def redis_unreachable(monkeypatch):
    """The cache's synchronous Redis client talks to a closed port from here on."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    unreachable = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    monkeypatch.setattr(store, "sync_redis", lambda: unreachable)
    # A purge's second delete fails too, at once, and is over before the test is.
    monkeypatch.setattr(store, "PURGE_REPEAT_SECONDS", 0)
    yield
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.join(5)


def test_a_purge_redis_does_not_carry_out_says_so(acme_caching, stored, redis_unreachable, caplog):
    with caplog.at_level(logging.ERROR, logger="routing.cache.store"), pytest.raises(CachePurgeIncomplete) as raised:
        cache_entries_purge(tenant=acme_caching.tenant)

    assert raised.value.deleted == 1
    assert "served from Redis until" in str(raised.value)
    assert not CacheEntry.objects.unscoped().exists()
    assert "Redis did not delete the copies of 1 deleted entries" in caplog.text


def test_the_purge_command_fails_when_redis_keeps_the_answers(acme_caching, stored, redis_unreachable):
    with pytest.raises(CommandError, match="Redis could not delete its copies"):
        call_command("cache_purge", "--tenant", "acme")
