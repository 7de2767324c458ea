"""The answer guard and the cache: an answer the guard flags is not stored, a stream's included, and every hit is
guarded at the tenant's action now, as an answer fresh from upstream is."""

import openai

from billing.models import UsageRecord
from routing.cache.store import cache_writes_flush
from routing.models import CacheEntry
from tests.cache.conftest import cache_policy, cache_policy_change, chat

# The mock upstream echoes the first words of the prompt: the answer carries the key (exact-cached only).
LEAKY = "AKIAIOSFODNN7EXAMPLE is this key still active?"


def refused_as_secret(response) -> bool:
    return response.status_code == 502 and response.json()["error"]["code"] == "answer_contains_secret"


def ledger(response) -> UsageRecord:
    return UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])


def stream(openai_client, setup, content):
    """The raw response, the text streamed, and the code of the error event that ended the stream, if one did."""
    raw = openai_client.chat.completions.with_raw_response.create(
        model=setup.small.name, messages=[{"role": "user", "content": content}], temperature=0, stream=True
    )
    pieces = []
    try:
        for chunk in raw.parse():
            pieces += [chunk.choices[0].delta.content or ""] if chunk.choices else []
    except openai.APIError as error:
        return raw, "".join(pieces), error.code
    return raw, "".join(pieces), None


def test_a_streamed_answer_the_guard_flags_is_not_stored(gateway, acme, embedder, openai_client):
    cache_policy(acme, guard="flag")
    raw, streamed, error = stream(openai_client, acme, LEAKY)
    assert "AKIAIOSFODNN7EXAMPLE" in streamed and error is None  # flag serves it
    cache_writes_flush()

    plain = chat(gateway, acme, LEAKY)

    assert not CacheEntry.objects.unscoped().exists()
    assert (plain.status_code, plain.headers["x-llmops-cache"]) == (200, "miss")
    assert ledger(raw).injection_flagged


def test_an_answer_stored_without_the_guard_is_not_served_once_it_blocks(gateway, acme, embedder, openai_client):
    policy = cache_policy(acme, guard="none")
    first = chat(gateway, acme, LEAKY)
    assert first.status_code == 200
    assert chat(gateway, acme, LEAKY).headers["x-llmops-cache"] == "hit-exact"
    cache_writes_flush()

    cache_policy_change(policy, guard="block")
    plain = chat(gateway, acme, LEAKY)
    raw, _, error = stream(openai_client, acme, LEAKY)

    assert plain.headers["x-llmops-cache"] == "miss"
    assert refused_as_secret(plain)
    assert raw.headers["x-llmops-cache"] == "miss" and error == "answer_contains_secret"


def test_under_flag_a_hit_the_guard_flags_is_served_and_flagged(gateway, acme, embedder):
    policy = cache_policy(acme, guard="none")
    chat(gateway, acme, LEAKY)
    cache_writes_flush()
    cache_policy_change(policy, guard="flag")

    hit = chat(gateway, acme, LEAKY)

    assert (hit.status_code, hit.headers["x-llmops-cache"]) == (200, "hit-exact")
    assert ledger(hit).injection_flagged


def test_under_flag_an_answer_the_guard_flags_is_served_and_not_stored(gateway, acme, embedder):
    cache_policy(acme, guard="flag")

    answers = [chat(gateway, acme, LEAKY) for _ in range(2)]
    cache_writes_flush()

    assert [(r.status_code, r.headers["x-llmops-cache"]) for r in answers] == [(200, "miss"), (200, "miss")]
    assert all(ledger(response).injection_flagged for response in answers)
    assert not CacheEntry.objects.unscoped().exists()
