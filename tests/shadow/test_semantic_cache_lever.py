"""The semantic_cache lever through the live gateway: a semantic hit is sampled, and its reference is a fresh call to
the model that served it with this request's own body — not the prompt whose answer the cache stored."""

import pytest

from billing.models import JudgeMethod, Lever
from routing.cache.store import cache_writes_flush
from tests.cache.conftest import cache_policy, chat, embedder  # noqa: F401 (embedder: a fixture)
from tests.servers import RecordingUpstream, ThreadedServer
from tests.shadow.conftest import evaluation_on, evaluations


@pytest.fixture
def recording(acme, embedder):  # noqa: F811 (the fixture imported above)
    """acme's provider pointed at a RecordingUpstream, and a policy that caches every request."""
    app = RecordingUpstream()
    with ThreadedServer(app) as server:
        provider = acme.small.provider
        provider.base_url = f"{server.url}/v1"
        provider.save()
        cache_policy(acme)
        yield app
    cache_writes_flush()


def test_a_semantic_hit_is_compared_with_a_fresh_answer_to_its_own_prompt(gateway, acme, recording, evaluated):
    evaluation_on(acme.tenant, semantic_cache=1)

    stored = chat(gateway, acme, "What is the capital of France?")
    cache_writes_flush()
    hit = chat(gateway, acme, "what's France's capital city")
    evaluated()

    assert (stored.headers["x-llmops-cache"], hit.headers["x-llmops-cache"]) == ("miss", "hit-semantic")
    (evaluation,) = evaluations()
    assert (evaluation.request_id, evaluation.lever) == (hit.headers["x-llmops-request-id"], Lever.SEMANTIC_CACHE)
    assert evaluation.served_model == evaluation.reference_model == acme.small.name
    assert evaluation.method == JudgeMethod.EMBEDDING
    # The upstream saw the stored prompt's call, then the reference: the served model, asked this request's prompt.
    first, reference = recording.chat_bodies
    assert first["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert reference["model"] == acme.small.upstream_name
    assert reference["messages"] == [{"role": "user", "content": "what's France's capital city"}]
    assert reference["temperature"] == 0 and "stream" not in reference
