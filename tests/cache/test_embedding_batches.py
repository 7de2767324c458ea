"""The embedding thread: lookups queued together share one embed call, each gets its own vector back, and an
embedder that fails costs a miss, never a hung request."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from routing.cache.embedders import embed_soon
from routing.cache.store import cache_store, cache_writes_flush
from routing.models import CacheEntry, CacheEntryKind
from tests.cache.conftest import cache_policy, cache_request, chat, stored_answer
from tests.cache.embedders import word_vectors


def test_texts_queued_while_a_batch_runs_share_the_next_embed_call(gated_embedder):
    gated_embedder.gate.clear()
    first = embed_soon("the first question")
    assert gated_embedder.started.wait(10)
    texts = [f"question number {i} about invoices" for i in range(6)]
    queued = threading.Semaphore(0)

    async def ask(text: str) -> np.ndarray:
        future = embed_soon(text)
        queued.release()
        return await asyncio.wrap_future(future)

    # Each caller on its own thread and event loop, as the gateway's workers and the batch runner are.
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = [pool.submit(asyncio.run, ask(text)) for text in texts]
        for _ in texts:
            assert queued.acquire(timeout=10)
        gated_embedder.gate.set()
        vectors = [answer.result(timeout=10) for answer in answers]

    np.testing.assert_array_equal(first.result(timeout=10), word_vectors(["the first question"])[0])
    assert gated_embedder.calls[0] == ["the first question"]
    assert sorted(gated_embedder.calls[1]) == sorted(texts)
    assert len(gated_embedder.calls) == 2
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_array_equal(vector, word_vectors([text])[0])


def test_the_batch_cap_bounds_one_embed_call(gated_embedder, settings):
    settings.LLMOPS_CACHE_EMBED_BATCH = 3
    gated_embedder.gate.clear()
    first = embed_soon("the first question")
    assert gated_embedder.started.wait(10)
    futures = [embed_soon(f"question number {i}") for i in range(7)]
    gated_embedder.gate.set()
    for future in [first, *futures]:
        future.result(timeout=10)
    assert [len(call) for call in gated_embedder.calls] == [1, 3, 3, 1]


def test_what_runs_after_the_embedding_gets_the_vector_and_its_error_stays_with_its_caller(gated_embedder):
    def refuse(vector):
        raise ValueError("this caller's search failed")

    gated_embedder.gate.clear()
    first = embed_soon("the first question")
    assert gated_embedder.started.wait(10)
    failing = embed_soon("a question", then=refuse)
    measured = embed_soon("another question", then=lambda vector: float(vector @ vector))
    gated_embedder.gate.set()

    first.result(timeout=10)
    with pytest.raises(ValueError, match="search failed"):
        failing.result(timeout=10)
    assert measured.result(timeout=10) == pytest.approx(1.0)
    assert len(gated_embedder.calls) == 2


@pytest.mark.parametrize("embedder", ["FailingEmbedder", "UnloadableEmbedder"])
def test_an_embedder_that_fails_costs_a_miss_and_exact_caching_goes_on(gateway, acme, settings, embedder):
    settings.LLMOPS_CACHE_EMBEDDER = f"tests.cache.embedders.{embedder}"
    cache_policy(acme)
    question = "What is the capital of France?"

    first = chat(gateway, acme, question)
    assert (first.status_code, first.headers["x-llmops-cache"]) == (200, "miss")
    assert chat(gateway, acme, question).headers["x-llmops-cache"] == "hit-exact"
    assert chat(gateway, acme, "What's the capital of France?").headers["x-llmops-cache"] == "miss"
    cache_writes_flush()
    assert set(CacheEntry.objects.unscoped().values_list("kind", flat=True)) == {CacheEntryKind.EXACT}


def test_a_stalled_embedder_costs_a_miss_not_a_hung_request(gateway, acme, settings, gated_embedder):
    settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS = 0.5
    cache_policy(acme)
    question = "What is the capital of France?"
    body = {"model": acme.small.name, "temperature": 0, "messages": [{"role": "user", "content": question}]}
    # Every embedding now waits 10 s for the gate; the client gives up after 5.
    gated_embedder.gate.clear()
    try:
        reply = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {acme.key}"},
            timeout=5,
        )
        assert (reply.status_code, reply.headers["x-llmops-cache"]) == (200, "miss")
        cache_writes_flush()
        # Stored for exact repeats only, which need no embedding.
        assert chat(gateway, acme, question).headers["x-llmops-cache"] == "hit-exact"
    finally:
        gated_embedder.gate.set()
    assert set(CacheEntry.objects.unscoped().values_list("kind", flat=True)) == {CacheEntryKind.EXACT}


def test_a_stalled_embedder_holds_the_cache_writer_for_one_wait_per_batch_not_one_per_store(
    gateway, acme, settings, gated_embedder
):
    """Waiting LLMOPS_CACHE_EMBED_WAIT_SECONDS per store, ten stores held the writer ten waits (and the flushes,
    exact stores and hit counts behind them); a batch now waits once, so a flush allowing four waits returns."""
    settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS = 1
    questions = [f"question number {i} about invoices" for i in range(10)]
    gated_embedder.gate.clear()
    try:
        for question in questions:
            cache_store(cache_request(acme, question), answer=stored_answer(f"answer to {question}"))
        cache_writes_flush(timeout=4 * settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS)
        stored = list(CacheEntry.objects.unscoped().values_list("kind", flat=True))
    finally:
        gated_embedder.gate.set()
    assert stored == [CacheEntryKind.EXACT] * len(questions)


STORED_AND_REWORDED = [
    ("What is the capital of France?", "what's France's capital city"),
    ("How do I reset my password?", "How can I reset my password"),
    ("Summarise our refund policy", "Can you summarise our refund policy?"),
    ("What are the health benefits of green tea?", "What health benefits does green tea have"),
]


def test_concurrent_paraphrases_each_find_their_own_entry(gateway, acme_caching):
    stored = {question: chat(gateway, acme_caching, question) for question, _ in STORED_AND_REWORDED}

    with ThreadPoolExecutor(len(STORED_AND_REWORDED)) as pool:
        replies = list(pool.map(lambda pair: chat(gateway, acme_caching, pair[1]), STORED_AND_REWORDED, timeout=60))

    for (question, _), reply in zip(STORED_AND_REWORDED, replies, strict=True):
        assert reply.headers["x-llmops-cache"] == "hit-semantic"
        assert reply.json()["choices"] == stored[question].json()["choices"]
