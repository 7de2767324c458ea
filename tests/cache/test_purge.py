"""Purging: the command and the admin, scoped to one tenant, clearing Redis so a purged answer is not served."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from routing.cache.store import cache_writes_flush
from routing.models import CacheEntry
from tenants.models import Membership
from tests.cache.conftest import chat

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
