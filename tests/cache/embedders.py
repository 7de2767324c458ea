"""Embedders for tests, configured through LLMOPS_CACHE_EMBEDDER like any other."""

import hashlib
import threading

import numpy as np

WORD_DIMENSIONS = 64


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


class FailingEmbedder:
    def embed(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("the embedding service is down")


class UnloadableEmbedder:
    def __init__(self):
        raise RuntimeError("the model files are missing")
