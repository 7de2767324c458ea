"""The in-process index, the embedded demo's (SQLite) search: loaded from the database's rows, whichever database."""

from datetime import timedelta

import numpy as np
from django.utils import timezone

from routing.cache.index import SemanticIndex
from routing.cache.sealed import seal_prompt
from routing.models import CacheEntry, CacheEntryKind
from tests.factories import TenantFactory


def test_the_index_loads_the_tenants_live_entries_and_finds_them_by_meaning(db, settings):
    settings.LLMOPS_CACHE_INDEX_REFRESH_SECONDS = 0
    acme, globex = TenantFactory(), TenantFactory()
    vector = np.array([0.6, 0.8, 0, 0], dtype=np.float32)
    for tenant, key, expires_in in [
        (acme, "live", timedelta(minutes=10)),
        (acme, "expired", timedelta(seconds=-1)),
        (globex, "other-tenant", timedelta(minutes=10)),
    ]:
        CacheEntry.objects.create(
            tenant=tenant,
            served_model="m",
            key_hash=key,
            kind=CacheEntryKind.SEMANTIC,
            answer_encrypted="unused",
            embedding=vector,
            prompt_encrypted=seal_prompt(f"prompt {key}"),
            context_fingerprint="ctx",
            expires_at=timezone.now() + expires_in,
        )
    index = SemanticIndex(acme.pk, "m")
    index.refresh()

    found = index.search(vector, context_fingerprint="ctx", threshold=0.9)
    assert [(candidate.entry.key_hash, candidate.entry.prompt) for candidate in found] == [("live", "prompt live")]
