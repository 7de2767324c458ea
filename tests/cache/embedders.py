"""Embedders for tests, configured through LLMOPS_CACHE_EMBEDDER like any other."""

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from routing.cache import embedders
from routing.cache.embedders import MeteredEmbeddings, on_embedding_thread
from routing.tokens import count_text_tokens

HTTP_EMBEDDER = "routing.cache.embedders.HttpEmbedder"
WORD_DIMENSIONS = 64
# What BilledEmbedder's provider bills a call beyond its texts' tokens.
BILLED_EXTRA_TOKENS = 5


@contextmanager
def http_embedder_configured(settings, *, url: str, model: str):
    """HttpEmbedder as the process's embedder (pytest-django's `settings`), calling `url`'s /embeddings for `model`.
    The process loads an embedder once per path: this one is built with these settings, and not kept past them."""
    settings.LLMOPS_CACHE_EMBEDDER = HTTP_EMBEDDER
    settings.LLMOPS_CACHE_EMBEDDINGS_URL = url
    settings.LLMOPS_CACHE_EMBEDDINGS_MODEL = model
    embedders._loaded.pop(HTTP_EMBEDDER, None)
    try:
        yield settings
    finally:
        embedders._loaded.pop(HTTP_EMBEDDER, None)


def word_vectors(texts: list[str]) -> np.ndarray:
    """A unit bag of hashed words per text: deterministic, instant, and different for different words."""
    matrix = np.zeros((len(texts), WORD_DIMENSIONS), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            matrix[row, int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % WORD_DIMENSIONS] += 1
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-9)


class GatedEmbedder:
    """Records the texts of every `embed` call. While `gate` is closed, a call waits for it (at most 10 s, so a
    test that never opens it fails instead of hanging); `started` is set once a call is waiting or done."""

    calls: list[list[str]] = []
    started = threading.Event()
    gate = threading.Event()

    @classmethod
    def reset(cls) -> None:
        cls.calls = []
        cls.started.clear()
        cls.gate.set()

    def embed(self, texts: list[str]) -> np.ndarray:
        type(self).calls.append(list(texts))
        type(self).started.set()
        type(self).gate.wait(10)
        return word_vectors(texts)


class BorrowedEmbedder:
    """Another embedder of the same dimension as its `lender`, as after LLMOPS_CACHE_EMBEDDER names another model of
    that size. Its vectors are the lender's: the worst case, where only the embedder's identity keeps them apart."""

    lender = None

    def embed(self, texts: list[str]) -> np.ndarray:
        return type(self).lender.embed(texts)


class FailingEmbedder:
    def embed(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("the embedding service is down")


class UnloadableEmbedder:
    def __init__(self):
        raise RuntimeError("the model files are missing")


class BilledEmbedder:
    """A paid embedder (it has `embed_metered`) whose provider counts otherwise than tiktoken: it bills each call
    BILLED_EXTRA_TOKENS more than its texts' tokens. Records the texts of every call."""

    model = "text-embedding-3-small"
    calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_metered(texts).vectors

    def embed_metered(self, texts: list[str]) -> MeteredEmbeddings:
        type(self).calls.append(list(texts))
        billed = sum(count_text_tokens(text, model=self.model) for text in texts) + BILLED_EXTRA_TOKENS
        return MeteredEmbeddings(vectors=word_vectors(texts), model=self.model, prompt_tokens=billed, elapsed_ms=1)


def chats_in_one_embedding_call(gateway, asked, chat) -> list:
    """``chat(gateway, setup, question)`` for each of ``asked`` at once, with the embedding thread held busy until
    every lookup has queued its text, so its next call embeds them all together; the replies, in order."""
    gate = threading.Event()
    held = on_embedding_thread(gate.wait, 10)
    with ThreadPoolExecutor(len(asked)) as pool:
        replies = [pool.submit(chat, gateway, setup, question) for setup, question in asked]
        deadline = time.monotonic() + 10
        while embedders._embedding_worker.queue.qsize() < len(asked) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        replies = [reply.result(timeout=30) for reply in replies]
    assert held.result(timeout=10)
    return replies
