"""Data at rest: Postgres and Redis keep no prompt, request or answer in clear, keys are keyed hashes, and a prompt
with personal data or a secret is answered from the cache only when repeated exactly."""

import hashlib
from datetime import timedelta

import orjson
import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.utils import timezone

from core.crypto import keyed_hash
from core.redis import sync_redis
from routing.cache.embedders import embedder_identity
from routing.cache.keys import SEMANTIC_MAX_PROMPT_CHARS, canonical_json, exact_key, semantic_key
from routing.cache.sealed import open_answer, open_prompt
from routing.cache.store import cache_writes_flush
from routing.models import CacheEntry, CacheEntryKind
from tests.cache.conftest import cache_policy, chat

SECRETS = ("4111111111111111", "jane.doe@example.com", "AKIAIOSFODNN7EXAMPLE", "sk-proj-Q7xV9mK2pL4nR8sT1wY6zA3b")
# The mock upstream echoes the first words of the prompt, so the answer carries the secrets too.
HOSTILE = " ".join(SECRETS) + " is my account safe?"
CLEAN = "What is the capital of France?"
CLEAN_PARAPHRASE = "what's France's capital city"


def everything_stored() -> str:
    """Every column of every cache row as Postgres holds it, and every Redis value of the cache, as one text."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT t::text FROM {CacheEntry._meta.db_table} AS t")
        rows = [row[0] for row in cursor.fetchall()]
    client = sync_redis()
    values = [client.get(key).decode() for key in client.scan_iter(match="llmops:cache:*")]
    return "\n".join(rows + values)


def test_postgres_and_redis_keep_no_prompt_and_no_answer_in_clear(gateway, acme, embedder):
    # With the answer guard off: under flag or block an answer carrying a secret is not stored at all.
    cache_policy(acme, guard="none")
    hostile = chat(gateway, acme, HOSTILE)
    chat(gateway, acme, CLEAN)
    assert all(secret in hostile.json()["choices"][0]["message"]["content"] for secret in SECRETS)
    cache_writes_flush()

    stored = everything_stored().lower()
    assert stored.count("\n") == 3  # two rows, two Redis copies
    for text in (*SECRETS, "capital of france", "is my account safe", "mock answer"):
        assert text.lower() not in stored
    entries = {entry.kind: entry for entry in CacheEntry.objects.unscoped().all()}
    assert entries[CacheEntryKind.EXACT].prompt_encrypted == ""
    assert open_prompt(entries[CacheEntryKind.SEMANTIC].prompt_encrypted) == CLEAN
    assert open_answer(entries[CacheEntryKind.EXACT].answer_encrypted)["choices"] == hostile.json()["choices"]

    repeated = chat(gateway, acme, HOSTILE)
    assert repeated.headers["x-llmops-cache"] == "hit-exact"
    assert repeated.json()["choices"] == hostile.json()["choices"]
    assert chat(gateway, acme, CLEAN_PARAPHRASE).headers["x-llmops-cache"] == "hit-semantic"


def test_a_prompt_with_personal_data_is_not_matched_by_meaning(gateway, acme_caching):
    chat(gateway, acme_caching, "Send the invoice to jane.doe@example.com please")

    reworded = chat(gateway, acme_caching, "Please send the invoice to jane.doe@example.com")
    assert reworded.headers["x-llmops-cache"] == "miss"
    cache_writes_flush()
    assert set(CacheEntry.objects.unscoped().values_list("kind", flat=True)) == {CacheEntryKind.EXACT}


def test_entries_written_under_a_dropped_encryption_key_are_misses(gateway, acme_caching, settings):
    chat(gateway, acme_caching, CLEAN)
    cache_writes_flush()
    settings.LLMOPS_ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.LLMOPS_CACHE_INDEX_REFRESH_SECONDS = 0

    for prompt in (CLEAN, CLEAN_PARAPHRASE):
        reply = chat(gateway, acme_caching, prompt, headers={"x-llmops-cache": "no-store"})
        assert (reply.status_code, reply.headers["x-llmops-cache"]) == (200, "miss")
    chat(gateway, acme_caching, CLEAN)
    assert chat(gateway, acme_caching, CLEAN).headers["x-llmops-cache"] == "hit-exact"


def test_keys_and_fingerprints_are_keyed_by_the_server_secret(settings):
    request = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": CLEAN}]}
    key = exact_key(tenant_id=7, served_model="m", upstream="u", request=request)
    fingerprint = semantic_key(request, upstream="u").context_fingerprint
    plain = hashlib.sha256(b"7\0m\0" + canonical_json(request)).hexdigest()

    assert key != plain
    settings.SECRET_KEY = "another-server-secret"
    assert exact_key(tenant_id=7, served_model="m", upstream="u", request=request) not in (key, plain)
    assert semantic_key(request, upstream="u").context_fingerprint != fingerprint


def test_no_key_or_fingerprint_is_one_the_release_that_sorted_nested_keys_made():
    """That release sorted every level: its entry for a schema listing `reasoning, answer` was keyed as this release
    keys the same request with every level in sorted order, whose schema lists `answer, reasoning`."""
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}}}
    stored_for = {"messages": [{"role": "user", "content": CLEAN}], "response_format": {"json_schema": schema}}
    sorted_everywhere = orjson.dumps(stored_for, option=orjson.OPT_SORT_KEYS)
    asked = orjson.loads(sorted_everywhere)
    old_key = keyed_hash(purpose="cache.exact-key", value=b"7\0m\0u\0" + sorted_everywhere)
    old_context = {**stored_for, "messages": [{"role": "user"}]}
    old_fingerprint = keyed_hash(
        purpose="cache.context",
        value=b"\0".join((b"u", embedder_identity().encode(), orjson.dumps(old_context, option=orjson.OPT_SORT_KEYS))),
    )

    assert list(asked["response_format"]["json_schema"]["properties"]) == ["answer", "reasoning"]
    assert canonical_json(asked) == sorted_everywhere
    assert exact_key(tenant_id=7, served_model="m", upstream="u", request=asked) != old_key
    assert semantic_key(asked, upstream="u").context_fingerprint != old_fingerprint


def test_the_context_fingerprint_names_the_embedder_and_the_model_it_runs(settings):
    """Read from the settings, without loading the embedder; one that cannot be imported still has a name."""
    request = {"messages": [{"role": "user", "content": CLEAN}]}
    fingerprints = [semantic_key(request, upstream="u").context_fingerprint]
    settings.LLMOPS_CACHE_EMBEDDER = "routing.cache.embedders.HttpEmbedder"
    settings.LLMOPS_CACHE_EMBEDDINGS_URL = "https://embeddings.example/v1"
    for model in ("text-embedding-3-small", "text-embedding-ada-002"):
        settings.LLMOPS_CACHE_EMBEDDINGS_MODEL = model
        fingerprints.append(semantic_key(request, upstream="u").context_fingerprint)
    settings.LLMOPS_CACHE_EMBEDDER = "routing.cache.embedders.NoSuchEmbedder"
    fingerprints.append(semantic_key(request, upstream="u").context_fingerprint)

    assert len(set(fingerprints)) == 4


@pytest.mark.parametrize(
    "text",
    [*(f"Is {secret} in the leak?" for secret in SECRETS), "x" * SEMANTIC_MAX_PROMPT_CHARS + " and one more word"],
    ids=["card", "email", "aws-key", "openai-key", "too-long"],
)
def test_personal_data_a_secret_or_a_long_prompt_is_matched_only_exactly(text):
    assert semantic_key({"messages": [{"role": "user", "content": "Is this in the leak?"}]}, upstream="u") is not None
    assert semantic_key({"messages": [{"role": "user", "content": text}]}, upstream="u") is None


BEFORE_AT_REST = [("routing", "0005_model_max_output_tokens")]
AT_REST = [("routing", "0006_cache_entries_at_rest")]


def test_the_migration_deletes_entries_stored_in_clear_and_their_redis_copies(migrated):
    old = migrated(BEFORE_AT_REST)
    tenant = old.get_model("tenants", "Tenant").objects.create(slug="old", name="old")
    old.get_model("routing", "CacheEntry").objects.create(
        tenant=tenant,
        served_model="m",
        key_hash="0" * 64,
        request={"messages": [{"role": "user", "content": HOSTILE}]},
        answer={"choices": [{"message": {"role": "assistant", "content": HOSTILE}}]},
        normalized_prompt=HOSTILE,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    sync_redis().set(f"llmops:cache:{tenant.pk}:m:{'0' * 64}", HOSTILE, ex=3600)
    migrated(AT_REST)

    assert not CacheEntry.objects.unscoped().exists()
    assert not list(sync_redis().scan_iter(match="llmops:cache:*"))
