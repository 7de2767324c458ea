"""Exact caching through the live gateway: keys, TTL, tenant isolation, tiers, client control, bad entries."""

import socket
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import redis.asyncio as aioredis
from django.utils import timezone

from billing.budgets.services import budget_create
from billing.models import UsageRecord
from core.redis import redis_command, sync_redis
from routing.cache import store
from routing.cache.sealed import seal_answer
from routing.cache.store import (
    cache_entries_expire,
    cache_entry_build,
    cache_lookup,
    cache_store,
    cache_writes_flush,
    redis_key,
)
from routing.models import CacheEntry
from routing.services import tenant_model_access_set
from tenants.models import PayloadLog
from tenants.services import api_key_create, payload_log_settings_set
from tests.cache.conftest import (
    CACHE_TTL_SECONDS,
    cache_policy,
    cache_policy_change,
    cache_request,
    chat,
    stored_answer,
)
from tests.factories import ModelFactory, ProviderFactory, TeamFactory
from tests.loops import run

QUESTION = "What is our refund window for annual plans?"


def ledger(response) -> UsageRecord:
    return UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])


def test_a_repeated_request_is_an_exact_hit_that_costs_nothing(gateway, acme_caching, mock_upstream):
    first = chat(gateway, acme_caching, QUESTION)
    served_before = mock_upstream.app.requests_served
    second = chat(gateway, acme_caching, QUESTION)

    assert first.headers["x-llmops-cache"] == "miss"
    assert second.status_code == 200
    assert second.headers["x-llmops-cache"] == "hit-exact"
    assert mock_upstream.app.requests_served == served_before
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["id"] != first.json()["id"]
    missed, hit = ledger(first), ledger(second)
    assert missed.cost_usd > 0
    assert (hit.cost_usd, hit.cache_status, hit.saved_cache_usd) == (0, "hit-exact", missed.cost_usd)
    assert second.headers["x-llmops-cost-usd"] == "0.0000000000"
    cache_writes_flush()
    assert CacheEntry.objects.unscoped().get(tenant=acme_caching.tenant).hit_count == 1


@pytest.mark.parametrize(
    "change",
    [{"max_tokens": 7}, {"seed": 42}, {"top_p": 0.5}, {"stop": ["\n"]}, {"response_format": {"type": "json_object"}}],
)
def test_any_option_that_changes_the_answer_misses(gateway, acme_caching, change):
    chat(gateway, acme_caching, QUESTION)
    assert chat(gateway, acme_caching, QUESTION, **change).headers["x-llmops-cache"] == "miss"


def _verdict_schema(*fields: str) -> dict:
    return {
        "type": "object",
        "properties": {field: {"type": "string"} for field in fields},
        "required": ["reasoning", "answer"],
        "additionalProperties": False,
    }


def _structured(*fields: str) -> dict:
    """A strict structured output whose fields the model writes in the order the schema lists them."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": _verdict_schema(*fields), "strict": True},
    }


def _tools(*fields: str) -> list:
    return [{"type": "function", "function": {"name": "verdict", "parameters": _verdict_schema(*fields)}}]


@pytest.mark.parametrize(
    "options",
    [
        lambda *fields: {"response_format": _structured(*fields)},
        lambda *fields: {"tools": _tools(*fields)},
    ],
    ids=["response_format", "tools"],
)
def test_the_order_of_a_schemas_properties_is_part_of_the_key(gateway, acme_caching, mock_upstream, options):
    """Keys sorted nested keys too: an answer written reasoning first was served to a schema asking for the answer
    first, by the exact key and by the context fingerprint of the semantic cache alike."""
    first = chat(gateway, acme_caching, "Is 91 prime?", **options("reasoning", "answer"))
    served = mock_upstream.app.requests_served
    second = chat(gateway, acme_caching, "Is 91 prime?", **options("answer", "reasoning"))

    assert [first.headers["x-llmops-cache"], second.headers["x-llmops-cache"]] == ["miss", "miss"]
    assert mock_upstream.app.requests_served == served + 1


def test_the_order_of_a_requests_own_fields_is_not_part_of_the_key(gateway, acme_caching, mock_upstream):
    chat(gateway, acme_caching, QUESTION, response_format=_structured("reasoning", "answer"))
    served = mock_upstream.app.requests_served
    body = {
        "response_format": _structured("reasoning", "answer"),
        "temperature": 0,
        "messages": [{"role": "user", "content": QUESTION}],
        "model": acme_caching.small.name,
    }
    reordered = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {acme_caching.key}"},
        timeout=30,
    )

    assert reordered.headers["x-llmops-cache"] == "hit-exact"
    assert mock_upstream.app.requests_served == served


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_hit_is_payload_logged_with_its_answer(gateway, acme_caching, stream):
    """A hit's payload log row had the request and no answer."""
    payload_log_settings_set(tenant=acme_caching.tenant, enabled=True)
    first = chat(gateway, acme_caching, QUESTION)
    hit = chat(gateway, acme_caching, QUESTION, stream=stream or None)

    assert hit.headers["x-llmops-cache"] == "hit-exact"
    logged = PayloadLog.objects.unscoped().get(request_id=hit.headers["x-llmops-request-id"]).response
    assert logged["choices"] == first.json()["choices"]
    assert logged["id"] == f"chatcmpl-{hit.headers['x-llmops-request-id']}"


def test_another_model_misses(gateway, acme_caching):
    chat(gateway, acme_caching, QUESTION)
    assert chat(gateway, acme_caching, QUESTION, model=acme_caching.large.name).headers["x-llmops-cache"] == "miss"


PARAPHRASE = "Could you tell me our refund window for annual plans?"


NO_STORE = {"x-llmops-cache": "no-store"}


def test_a_catalog_model_remapped_to_another_upstream_model_or_provider_misses(gateway, acme_caching):
    model = acme_caching.small
    chat(gateway, acme_caching, QUESTION)
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "hit-exact"
    assert chat(gateway, acme_caching, PARAPHRASE, headers=NO_STORE).headers["x-llmops-cache"] == "hit-semantic"

    model.upstream_name = "mock-large"
    model.save()
    remapped = chat(gateway, acme_caching, QUESTION, headers=NO_STORE)
    assert remapped.headers["x-llmops-cache"] == "miss"
    assert remapped.json()["model"] == "mock-large"
    assert chat(gateway, acme_caching, PARAPHRASE, headers=NO_STORE).headers["x-llmops-cache"] == "miss"

    chat(gateway, acme_caching, QUESTION)
    model.provider = ProviderFactory(name="mock-elsewhere", base_url=model.provider.base_url)
    model.save()
    assert chat(gateway, acme_caching, QUESTION, headers=NO_STORE).headers["x-llmops-cache"] == "miss"
    assert chat(gateway, acme_caching, PARAPHRASE, headers=NO_STORE).headers["x-llmops-cache"] == "miss"


def test_a_lowered_ttl_applies_to_the_entries_stored_before(gateway, acme, embedder):
    policy = cache_policy(acme, ttl=CACHE_TTL_SECONDS)
    chat(gateway, acme, QUESTION)
    assert chat(gateway, acme, QUESTION).headers["x-llmops-cache"] == "hit-exact"
    assert chat(gateway, acme, PARAPHRASE, headers=NO_STORE).headers["x-llmops-cache"] == "hit-semantic"

    cache_policy_change(policy, ttl=1)
    time.sleep(1.5)
    assert chat(gateway, acme, QUESTION, headers=NO_STORE).headers["x-llmops-cache"] == "miss"
    assert chat(gateway, acme, PARAPHRASE, headers=NO_STORE).headers["x-llmops-cache"] == "miss"


def test_a_request_for_log_probabilities_is_not_cached(gateway, acme_caching, openai_client):
    responses = [chat(gateway, acme_caching, QUESTION, logprobs=True) for _ in range(2)]
    assert [r.headers["x-llmops-cache"] for r in responses] == ["bypass", "bypass"]
    streamed = openai_client.chat.completions.with_raw_response.create(
        model=acme_caching.small.name,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        stream=True,
        logprobs=True,
    )
    list(streamed.parse())
    assert streamed.headers["x-llmops-cache"] == "bypass"
    cache_writes_flush()
    assert not CacheEntry.objects.unscoped().exists()


@pytest.mark.parametrize("finish_reason", ["length", "content_filter", None])
def test_an_answer_that_did_not_finish_whole_is_not_stored(gateway, acme_caching, finish_reason):
    """Cut at max_tokens, withheld by a filter, or with no finish reason at all: not the whole answer."""
    cache = cache_request(acme_caching, QUESTION)
    answer = stored_answer("Our refund window is")
    answer["choices"][0]["finish_reason"] = finish_reason
    cache_store(cache, answer=answer)
    cache_writes_flush()

    assert not CacheEntry.objects.unscoped().exists()
    assert run(cache_lookup(cache)) is None


def test_a_cut_short_chat_answer_that_says_it_is_a_list_is_not_stored(gateway, acme_caching):
    """Any answer of object "list" with data passed as an embeddings list, whatever its choices said."""
    cache = cache_request(acme_caching, QUESTION)
    answer = {**stored_answer("Our refund window is"), "object": "list", "data": [1]}
    answer["choices"][0]["finish_reason"] = "length"
    cache_store(cache, answer=answer)
    cache_writes_flush()

    assert not CacheEntry.objects.unscoped().exists()
    assert run(cache_lookup(cache)) is None


@pytest.mark.parametrize("finish_reason", ["stop", "tool_calls"])
def test_a_whole_answer_is_stored(gateway, acme_caching, finish_reason):
    cache = cache_request(acme_caching, QUESTION)
    answer = stored_answer("30 days.")
    answer["choices"][0]["finish_reason"] = finish_reason
    cache_store(cache, answer=answer)
    cache_writes_flush()

    assert run(cache_lookup(cache)).answer == answer


def test_an_answer_that_reaches_the_cap_a_budget_adds_is_not_served_to_a_request_without_one(
    gateway, acme_caching, settings
):
    """A budget caps a request without max_tokens, for a model with no known maximum output, at the reservation's
    cap, after its key was made (without max_tokens): an answer that reaches the cap may be cut short (the mock
    upstream says "stop" even then), so it is not the answer to the request the key stands for."""
    settings.LLMOPS_RESERVATION_MAX_TOKENS = 5
    budget_create(tenant=acme_caching.tenant, scope="team", team=acme_caching.team, period="day", limit_usd=Decimal(1))
    _, unbudgeted_key = api_key_create(team=TeamFactory(tenant=acme_caching.tenant, slug="sales"), name="sales key")

    capped = chat(gateway, acme_caching, QUESTION)
    cache_writes_flush()
    unbudgeted = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": acme_caching.small.name, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0},
        headers={"authorization": f"Bearer {unbudgeted_key}"},
    )

    assert capped.json()["usage"]["completion_tokens"] == 5
    assert unbudgeted.headers["x-llmops-cache"] == "miss"
    assert unbudgeted.json()["usage"]["completion_tokens"] > 5


def test_an_answer_that_ends_below_the_cap_a_budget_adds_is_cached(gateway, acme_caching):
    budget_create(tenant=acme_caching.tenant, scope="team", team=acme_caching.team, period="day", limit_usd=Decimal(1))

    first = chat(gateway, acme_caching, QUESTION)
    again = chat(gateway, acme_caching, QUESTION)

    assert again.headers["x-llmops-cache"] == "hit-exact"
    assert again.json()["choices"] == first.json()["choices"]


def test_nondeterministic_requests_and_several_choices_bypass_unless_the_rule_opts_in(gateway, acme, embedder):
    cache_policy(acme)
    for options in ({"temperature": None}, {"temperature": 0.7}, {"n": 2}):
        responses = [chat(gateway, acme, QUESTION, **options) for _ in range(2)]
        assert [r.headers["x-llmops-cache"] for r in responses] == ["bypass", "bypass"], options
    cache_writes_flush()
    assert not CacheEntry.objects.unscoped().exists()


def test_a_rule_may_cache_nondeterministic_requests(gateway, acme, embedder):
    cache_policy(acme, nondeterministic=True)
    chat(gateway, acme, QUESTION, temperature=0.7)
    assert chat(gateway, acme, QUESTION, temperature=0.7).headers["x-llmops-cache"] == "hit-exact"


def test_without_a_ttl_on_the_rule_nothing_is_cached(gateway, acme):
    responses = [chat(gateway, acme, QUESTION) for _ in range(2)]
    assert [r.headers["x-llmops-cache"] for r in responses] == ["bypass", "bypass"]


def test_an_expired_entry_misses_and_the_expiry_job_deletes_it(gateway, acme_caching):
    chat(gateway, acme_caching, QUESTION)
    cache_writes_flush()
    entry = CacheEntry.objects.unscoped().get()
    key = redis_key(acme_caching.tenant.pk, entry.served_model, entry.key_hash)
    assert 0 < sync_redis().ttl(key) <= CACHE_TTL_SECONDS
    assert entry.expires_at - entry.created_at == pytest.approx(
        timedelta(seconds=CACHE_TTL_SECONDS), abs=timedelta(seconds=5)
    )

    CacheEntry.objects.unscoped().update(expires_at=timezone.now() - timedelta(seconds=1))
    sync_redis().delete(key)  # Redis drops it by the same TTL
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "miss"
    # The miss stores its answer after responding: let that write land before expiring the row it renews.
    cache_writes_flush()
    CacheEntry.objects.unscoped().update(expires_at=timezone.now() - timedelta(seconds=1))
    assert cache_entries_expire() == 1
    assert not CacheEntry.objects.unscoped().exists()


def test_identical_prompts_from_two_tenants_never_share_an_answer(gateway, acme_caching, globex_caching):
    # globex may use acme's model too, so only the tenant tells the two requests apart.
    tenant_model_access_set(
        tenant=globex_caching.tenant, allowed_models=[acme_caching.small], default_model=acme_caching.small
    )
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "miss"
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "hit-exact"
    as_globex = {"model": acme_caching.small.name, "headers": {"x-llmops-cache": "no-store"}}
    assert chat(gateway, globex_caching, QUESTION, **as_globex).headers["x-llmops-cache"] == "miss"
    paraphrase = "Could you tell me our refund window for annual plans?"
    assert chat(gateway, acme_caching, paraphrase).headers["x-llmops-cache"] == "hit-semantic"
    assert chat(gateway, globex_caching, paraphrase, **as_globex).headers["x-llmops-cache"] == "miss"
    cache_writes_flush()
    assert not CacheEntry.objects.unscoped().filter(tenant=globex_caching.tenant).exists()


def test_a_flushed_redis_still_hits_from_postgres_and_is_refilled(gateway, acme_caching):
    chat(gateway, acme_caching, QUESTION)
    cache_writes_flush()
    sync_redis().flushdb()
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "hit-exact"
    entry = CacheEntry.objects.unscoped().get()
    assert sync_redis().exists(redis_key(acme_caching.tenant.pk, entry.served_model, entry.key_hash))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-llmops-cache": "bypass"}, "bypass"),
        ({"cache-control": "no-cache"}, "bypass"),
        ({"x-llmops-cache": "no-store"}, "hit-exact"),
        ({"cache-control": "no-store"}, "hit-exact"),
    ],
)
def test_client_cache_control_on_reading(gateway, acme_caching, headers, status):
    chat(gateway, acme_caching, QUESTION)
    assert chat(gateway, acme_caching, QUESTION, headers=headers).headers["x-llmops-cache"] == status


@pytest.mark.parametrize("headers", [{"x-llmops-cache": "no-store"}, {"cache-control": "no-store"}])
def test_no_store_keeps_nothing(gateway, acme_caching, headers):
    chat(gateway, acme_caching, QUESTION, headers=headers)
    cache_writes_flush()
    assert not CacheEntry.objects.unscoped().exists()
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "miss"


def test_bypass_still_stores_the_fresh_answer(gateway, acme_caching):
    chat(gateway, acme_caching, QUESTION, headers={"x-llmops-cache": "bypass"})
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "hit-exact"


def test_upstream_errors_are_not_cached(gateway, acme_caching):
    failing = ModelFactory(name="acme-failing", provider=acme_caching.small.provider, upstream_name="fail-500")
    tenant_model_access_set(
        tenant=acme_caching.tenant, allowed_models=[acme_caching.small, failing], default_model=acme_caching.small
    )
    assert chat(gateway, acme_caching, QUESTION, model=failing.name).status_code >= 500
    assert chat(gateway, acme_caching, QUESTION, model=failing.name).headers.get("x-llmops-cache") != "hit-exact"
    cache_writes_flush()
    assert not CacheEntry.objects.unscoped().exists()


def test_a_corrupt_entry_is_a_miss_not_an_error(gateway, acme_caching):
    chat(gateway, acme_caching, QUESTION)
    cache_writes_flush()
    entry = CacheEntry.objects.unscoped().get()
    CacheEntry.objects.unscoped().update(answer_encrypted=seal_answer({"choices": "not a list"}))
    sync_redis().set(redis_key(acme_caching.tenant.pk, entry.served_model, entry.key_hash), b"{not json")

    response = chat(gateway, acme_caching, QUESTION)
    assert response.status_code == 200
    assert response.headers["x-llmops-cache"] == "miss"
    assert chat(gateway, acme_caching, QUESTION).headers["x-llmops-cache"] == "hit-exact"


class DownRedis(aioredis.Redis):
    """An async client of a Redis that is not there (a closed port): every command fails to connect. Counts the
    commands tried, the lookup's (sent through ``redis_command``) and the copy-back's."""

    def __init__(self, calls: list[str]):
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        super().__init__(host="127.0.0.1", port=port, socket_connect_timeout=1)
        self.calls = calls

    async def set(self, *args, **kwargs):
        self.calls.append("set")
        return await super().set(*args, **kwargs)


def test_with_redis_down_a_database_hit_is_not_copied_back_to_it(db, acme_caching, monkeypatch):
    """One failing Redis call per lookup during an outage: the row Postgres answers is not copied back to it."""
    cache = cache_request(acme_caching, QUESTION)
    cache.semantic = None
    cache_entry_build(
        cache, answer=stored_answer("30 days."), vector=None, expires_at=timezone.now() + timedelta(minutes=10)
    ).save()
    calls = []
    down = DownRedis(calls)

    async def counted(client, *args):
        calls.append(args[0].lower())
        return await redis_command(client, *args)

    monkeypatch.setattr(store, "async_redis", lambda: down)
    monkeypatch.setattr(store, "redis_command", counted)

    hit = run(store.cache_lookup(cache))

    assert (hit.kind, hit.answer["choices"][0]["message"]["content"]) == ("exact", "30 days.")
    assert calls == ["get"]
