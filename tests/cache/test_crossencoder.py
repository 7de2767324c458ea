"""The cross-encoder: its int8 scorer, the decision it takes after the near-miss guard, the gateway failing closed
without it, and the command that installs it. The model is the one `make install` trained (var/crossenc)."""

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from onnx import TensorProto, helper

from core.jsonl import jsonl_lines
from routing.cache import crossencoder, store
from routing.cache.crossenc_train import TrainingPair, _model, crossenc_export, in_sample_check, in_sample_failures
from routing.cache.crossencoder import (
    OnnxCrossEncoder,
    candidate_accepted,
    configured_crossencoder,
    crossenc_files,
    semantic_decide,
)
from routing.cache.index import Candidate, IndexedEntry, semantic_indexes_forget
from routing.cache.store import cache_lookup, cache_store, cache_writes_flush
from tests.cache.conftest import cache_policy, cache_request, cache_writes_blocked, chat, stored_answer
from tests.loops import run

ROOT = Path(settings.BASE_DIR)
# (stored, asked), normalised as the cache keeps them: the guard lets each through; the cross-encoder serves the
# paraphrases and refuses the near-misses.
PARAPHRASES = [
    ("how do i reset my password", "steps to reset my password"),
    ("what is the capital of france", "what's france's capital city"),
]
# Two prompts near "steps to reset my password" that the guard lets through and the model scores far apart.
REWORDINGS = ["how do i reset my password", "steps to reset a password"]
# Near-misses of the tuning pairs (bench/cache_holdout.jsonl) the guard lets through at similarity 0.86 and 0.91: the
# install's check refuses a model that serves them.
NEAR_MISSES_THE_GUARD_MISSES = [
    ("what does 7 // 2 return in python", "what does 7 % 2 return in python"),
    ("how do i thicken a soup", "how do i thin out a soup that's too thick"),
]


@pytest.fixture(scope="session")
def model() -> OnnxCrossEncoder:
    loaded = configured_crossencoder()
    assert loaded is not None, "the cross-encoder must be installed: `manage.py crossenc_train` (make install)"
    return loaded


def candidate(prompt: str, similarity: float, key: str | None = None) -> Candidate:
    return Candidate(IndexedEntry(key or prompt, prompt, "context", time.time() + 600), similarity)


class Recording:
    """The real model, noting each run's pairs and the thread it ran on."""

    def __init__(self, model: OnnxCrossEncoder, gate: threading.Event | None = None):
        self.model = model
        self.gate = gate
        self.runs: list[tuple[str, list[tuple[str, str]]]] = []

    def score(self, pairs):
        if self.gate is not None:
            self.gate.wait(10)
        self.runs.append((threading.current_thread().name, list(pairs)))
        return self.model.score(pairs)


@pytest.fixture
def recording(model, monkeypatch) -> Recording:
    spy = Recording(model)
    monkeypatch.setattr(crossencoder, "configured_crossencoder", lambda: spy)
    return spy


# The scorer


def test_the_scorer_scores_a_batch_in_the_order_of_its_pairs(model):
    paraphrase, near_miss = PARAPHRASES[0], NEAR_MISSES_THE_GUARD_MISSES[0]
    threshold = settings.LLMOPS_CACHE_CROSSENC_THRESHOLD

    forward = model.score([paraphrase, near_miss])
    backward = model.score([near_miss, paraphrase])

    assert forward.shape == (2,) and forward.dtype == np.float32
    assert ((forward >= 0) & (forward <= 1)).all()
    assert forward[0] >= threshold > forward[1]
    assert backward[1] >= threshold > backward[0]
    np.testing.assert_allclose(forward, backward[::-1], atol=0.02)
    np.testing.assert_allclose(forward, [model.score([pair])[0] for pair in (paraphrase, near_miss)], atol=0.02)
    assert model.score([]).shape == (0,)


def test_the_scorer_reads_the_stored_prompt_first(model):
    """The pair is not symmetric input: "[CLS] stored [SEP] asked [SEP]", segment ids 0 then 1."""
    inputs = crossencoder.encode_pairs(model.tokenizer, [("reset password", "steps to reset my password")])
    ids = inputs["input_ids"][0].tolist()
    separator = ids.index(102)
    assert model.tokenizer.decode(ids[1:separator]) == "reset password"
    assert inputs["token_type_ids"][0].tolist() == [0] * (separator + 1) + [1] * (len(ids) - separator - 1)


def test_a_long_pair_is_cut_to_the_models_length(model):
    long = "summarise the refund policy for orders that arrived late " * 20
    inputs = crossencoder.encode_pairs(model.tokenizer, [(long, long), ("short", "pair")])
    assert inputs["input_ids"].shape == (2, crossencoder.MAX_LENGTH)
    assert model.score([(long, long)]).shape == (1,)


def test_a_pair_longer_than_the_model_reads_scores_zero_and_its_run_mates_as_alone(model):
    """Cut short, two long prompts that differ only past the cut would read alike: the model does not vouch for them."""
    instruction = "summarise this ticket in two sentences for the on-call engineer: exports to csv time out " * 3
    first, second = instruction + "on the eu cluster", instruction + "on the us cluster"
    assert len(model.tokenizer.encode(first, second).overflowing) > 0
    short = PARAPHRASES[0]

    scores = model.score([(first, second), short])

    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(model.score([short])[0], abs=0.02)
    assert model.score([short])[0] > 0


def test_the_export_is_checked_on_the_graphs_output_long_pairs_included(tmp_path):
    """The install checks the fp32 graph against torch on every 25th training pair, long ones included: the serving
    rule's 0 for a long pair is not the graph's output, and must not fail the check."""
    model = _model(dropout=0.1).eval()
    long = "summarise this ticket in two sentences for the on-call engineer: exports to csv time out " * 3
    files = crossenc_export(model, tmp_path, check_pairs=[(long, long + "today"), PARAPHRASES[0]])
    exported = OnnxCrossEncoder(model_file=files["model"], tokenizer_file=files["tokenizer"])
    assert exported.score([(long, long + "today")])[0] == 0.0
    assert exported.graph_scores([(long, long + "today")])[0] > 0


WORKER_SCORES = """
import json, sys
import llmops.asgi
from routing.cache.crossencoder import configured_crossencoder
from routing.cache.embedders import configured_embedder
configured_embedder()  # a worker that is up: its startup thread has loaded both models
model = configured_crossencoder()
scores = model.score([("how do i reset my password", "steps to reset my password")])
print(json.dumps({
    "model_file": str(model.model_file),
    "score": float(scores[0]),
    "torch": sorted(name for name in sys.modules if name == "torch" or name.startswith("torch.")),
}))
"""


def test_a_gateway_worker_scores_without_importing_torch():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "llmops.settings", "LOG_LEVEL": "WARNING"}
    finished = subprocess.run(
        [sys.executable, "-c", WORKER_SCORES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["torch"] == []
    assert report["model_file"] == str(crossenc_files()["model"])
    assert report["score"] >= settings.LLMOPS_CACHE_CROSSENC_THRESHOLD


# The decision


def test_a_candidate_the_guard_refuses_is_never_scored(recording):
    asked = "how do i enable 2fa on my account"
    refused = candidate("how do i disable 2fa on my account", 0.95)

    assert candidate_accepted(asked, [refused]) is None
    assert recording.runs == []

    accepted = candidate("how can i turn on 2fa for my account", 0.9)
    assert candidate_accepted(asked, [refused, accepted]) == accepted
    assert [pairs for _, pairs in recording.runs] == [[(accepted.entry.prompt, asked)]]


def test_a_candidate_below_the_cross_encoders_threshold_is_refused(model, settings):
    stored, asked = PARAPHRASES[0]
    (score,) = model.score([(stored, asked)])
    found = candidate(stored, 0.8)

    settings.LLMOPS_CACHE_CROSSENC_THRESHOLD = float(score) + 1e-4
    assert candidate_accepted(asked, [found]) is None
    settings.LLMOPS_CACHE_CROSSENC_THRESHOLD = float(score) - 1e-4
    assert candidate_accepted(asked, [found]) == found


def test_candidates_are_scored_alone_most_similar_first_until_one_is_accepted(model, recording, settings):
    asked = "steps to reset my password"
    # The less similar candidate scores higher: the order of similarity, not of score, picks the winner.
    lower, higher = sorted(REWORDINGS, key=lambda stored: model.score([(stored, asked)])[0])
    most_similar, less_similar = candidate(lower, 0.90), candidate(higher, 0.80)
    (low,), (high,) = model.score([(lower, asked)]), model.score([(higher, asked)])
    assert high - low > 0.1, (low, high)

    settings.LLMOPS_CACHE_CROSSENC_THRESHOLD = float(low) - 1e-4
    assert candidate_accepted(asked, [less_similar, most_similar]) == most_similar
    # A hit pays for its own pair: the less similar candidate is never scored.
    assert [pairs for _, pairs in recording.runs] == [[(lower, asked)]]

    recording.runs.clear()
    settings.LLMOPS_CACHE_CROSSENC_THRESHOLD = float(low + high) / 2
    assert candidate_accepted(asked, [less_similar, most_similar]) == less_similar
    assert [pairs for _, pairs in recording.runs] == [[(lower, asked)], [(higher, asked)]]

    recording.runs.clear()
    settings.LLMOPS_CACHE_CROSSENC_THRESHOLD = float(high) + 1e-4
    assert candidate_accepted(asked, [less_similar, most_similar]) is None
    assert len(recording.runs) == 2


def test_the_same_prompt_asked_again_needs_no_score(recording):
    """Nothing for a second opinion to read (the model scores such a pair low: it never saw one)."""
    asked = "How do I reset my password?"
    same, reworded = candidate(asked, 1.0), candidate("how can i reset my password", 0.95)

    assert candidate_accepted(asked, [reworded, same]) == same
    assert recording.runs == []


@pytest.mark.parametrize("crossenc", ["on", "off"])
@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("What is 10!", "What is 10?"),
        ("How many capital letters are in 'NASA'?", "How many capital letters are in 'nasa'?"),
        ("Is this valid Python: if x:\n    pass", "Is this valid Python: if x: pass"),
    ],
    ids=["edge-punctuation", "case", "spacing"],
)
def test_a_prompt_that_is_the_asked_one_only_once_normalised_is_refused_unscored(
    settings, recording, crossenc, stored, asked
):
    """What tells them apart is what normalisation drops, which neither the guard nor the cross-encoder reads."""
    settings.LLMOPS_CACHE_CROSSENC = crossenc

    assert candidate_accepted(asked, [candidate(stored, 1.0)]) is None
    assert recording.runs == []


def test_off_the_guard_alone_decides(settings, recording):
    settings.LLMOPS_CACHE_CROSSENC = "off"
    stored, asked = NEAR_MISSES_THE_GUARD_MISSES[0]
    served = candidate(stored, 0.9)

    assert candidate_accepted(asked, [served]) == served
    assert recording.runs == []


def test_without_its_model_the_cross_encoder_accepts_nothing_and_warns_once(settings, tmp_path, caplog):
    settings.LLMOPS_CACHE_CROSSENC_DIR = tmp_path
    stored, asked = PARAPHRASES[0]

    with caplog.at_level(logging.WARNING, logger="routing.cache.crossencoder"):
        assert candidate_accepted(asked, [candidate(stored, 0.95)]) is None
        assert candidate_accepted(asked, [candidate(asked, 1.0)]) is None
    warnings = [record for record in caplog.records if "serves no semantic hit" in record.getMessage()]
    assert len(warnings) == 1


def test_the_decision_runs_on_the_embedding_thread(recording):
    stored, asked = PARAPHRASES[0]
    found = candidate(stored, 0.9)

    accepted = asyncio.run(semantic_decide(asked, [found], deadline=time.monotonic() + 10))

    assert accepted == found
    assert [thread for thread, _ in recording.runs] == ["cache-embedder"]


def test_a_stalled_scorer_is_a_refusal_once_the_deadline_passes(model, monkeypatch, caplog):
    gate = threading.Event()
    stalled = Recording(model, gate)
    monkeypatch.setattr(crossencoder, "configured_crossencoder", lambda: stalled)
    stored, asked = PARAPHRASES[0]
    try:
        with caplog.at_level(logging.WARNING, logger="routing.cache.crossencoder"):
            accepted = asyncio.run(semantic_decide(asked, [candidate(stored, 0.9)], deadline=time.monotonic() + 0.3))
    finally:
        gate.set()
    assert accepted is None
    assert "did not score in time" in caplog.text


def test_a_failing_scorer_is_a_refusal(monkeypatch, caplog):
    class Failing:
        def score(self, pairs):
            raise RuntimeError("onnxruntime: out of memory")

    monkeypatch.setattr(crossencoder, "configured_crossencoder", Failing)
    stored, asked = PARAPHRASES[0]
    with caplog.at_level(logging.WARNING, logger="routing.cache.crossencoder"):
        accepted = asyncio.run(semantic_decide(asked, [candidate(stored, 0.9)], deadline=time.monotonic() + 10))
    assert accepted is None
    assert "the cross-encoder failed" in caplog.text


# Through the live gateway


def test_the_gateway_serves_a_paraphrase_and_refuses_a_near_miss_the_guard_lets_through(gateway, acme_caching):
    chat(gateway, acme_caching, "What does 7 // 2 return in Python?")
    assert chat(gateway, acme_caching, "What does 7 % 2 return in Python?").headers["x-llmops-cache"] == "miss"

    chat(gateway, acme_caching, "What is the capital of France?")
    assert chat(gateway, acme_caching, "what's France's capital city").headers["x-llmops-cache"] == "hit-semantic"


@pytest.fixture
def in_process_index(acme_caching, monkeypatch):
    """The embedded demo's path on this database: lookups search this process's index, never Postgres; the index is
    forgotten afterwards, as no process keeps one on Postgres."""
    monkeypatch.setattr(store, "vectors_in_database", lambda: False)

    def not_on_this_path(**query):
        raise AssertionError("searched Postgres")

    monkeypatch.setattr(store, "stored_matches", not_on_this_path)
    yield
    semantic_indexes_forget(acme_caching.tenant.pk)


def test_the_in_process_index_of_sqlite_takes_the_same_decision(acme_caching, in_process_index, settings):
    """Candidates from this process's index (searched on the embedding thread), then the same guard and
    cross-encoder."""
    settings.LLMOPS_CACHE_INDEX_REFRESH_SECONDS = 3600
    with cache_writes_blocked():
        for question in ("What does 7 // 2 return in Python?", "What is the capital of France?"):
            cache = cache_request(acme_caching, question)
            assert run(cache_lookup(cache)) is None
            cache_store(cache, answer=stored_answer(question))
        near_miss = run(cache_lookup(cache_request(acme_caching, "What does 7 % 2 return in Python?")))
        paraphrase = run(cache_lookup(cache_request(acme_caching, "what's France's capital city")))
    cache_writes_flush()

    assert near_miss is None
    assert (paraphrase.kind, paraphrase.answer) == ("semantic", stored_answer("What is the capital of France?"))


@pytest.fixture
def reset_lookup(acme_caching, model, settings):
    """A lookup of "steps to reset my password" with three candidates, most similar first: one the model refuses,
    one it accepts whose answer is gone, and the same prompt under the key of an answer that is stored."""
    asked = cache_request(acme_caching, "Steps to reset my password")
    refused_prompt, accepted_prompt = sorted(
        REWORDINGS, key=lambda stored: model.score([(stored, asked.semantic.prompt)])[0]
    )
    (low,), (high,) = (model.score([(prompt, asked.semantic.prompt)]) for prompt in (refused_prompt, accepted_prompt))
    settings.LLMOPS_CACHE_CROSSENC_THRESHOLD = float(low + high) / 2
    kept = cache_request(acme_caching, accepted_prompt)
    cache_store(kept, answer=stored_answer(accepted_prompt))
    cache_writes_flush()
    candidates = [
        candidate(refused_prompt, 0.97),
        candidate(accepted_prompt, 0.95, key="f" * 64),
        candidate(accepted_prompt, 0.9, key=kept.key_hash),
    ]
    return asked, candidates


def test_an_accepted_candidate_whose_answer_is_gone_gives_way_to_the_next(reset_lookup, recording):
    """The answer of the candidate accepted first was purged or expired after the search: the less similar
    candidates are decided next, and the first of them accepted is served; one already refused is not scored again."""
    asked, (refused, gone, found) = reset_lookup

    hit = run(store._semantic_hit(asked, [found, gone, refused], deadline=time.monotonic() + 10))

    assert (hit.kind, hit.answer) == ("semantic", stored_answer(found.entry.prompt))
    scored = [pairs for _, pairs in recording.runs]
    prompt = asked.semantic.prompt
    assert scored == [[(refused.entry.prompt, prompt)], [(gone.entry.prompt, prompt)], [(found.entry.prompt, prompt)]]


def test_no_candidate_is_decided_after_a_gone_answer_once_the_wait_has_run_out(
    reset_lookup, recording, monkeypatch, caplog
):
    asked, (refused, gone, found) = reset_lookup
    deadline = time.monotonic() + 5
    answer_for = store._answer_for

    async def slow_answer_for(tenant_id, served_model, key_hash):
        # The read of the gone answer takes the rest of the wait.
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
        return await answer_for(tenant_id, served_model, key_hash)

    monkeypatch.setattr(store, "_answer_for", slow_answer_for)
    with caplog.at_level(logging.WARNING, logger="routing.cache.crossencoder"):
        hit = run(store._semantic_hit(asked, [found, gone, refused], deadline=deadline))

    assert hit is None
    assert len(recording.runs) == 2
    assert "did not score in time" not in caplog.text


def test_without_its_model_the_gateway_serves_exact_hits_only(gateway, acme, embedder, settings, tmp_path):
    settings.LLMOPS_CACHE_CROSSENC_DIR = tmp_path
    cache_policy(acme)

    assert chat(gateway, acme, "What is the capital of France?").headers["x-llmops-cache"] == "miss"
    assert chat(gateway, acme, "What is the capital of France?").headers["x-llmops-cache"] == "hit-exact"
    assert chat(gateway, acme, "what's France's capital city").headers["x-llmops-cache"] == "miss"


def test_with_the_cross_encoder_off_the_gateway_serves_by_similarity_and_guard(
    gateway, acme, embedder, settings, tmp_path
):
    settings.LLMOPS_CACHE_CROSSENC = "off"
    settings.LLMOPS_CACHE_CROSSENC_DIR = tmp_path
    settings.LLMOPS_CACHE_SEMANTIC_THRESHOLD = 0.75
    cache_policy(acme)

    chat(gateway, acme, "What does 7 // 2 return in Python?")
    assert chat(gateway, acme, "What does 7 % 2 return in Python?").headers["x-llmops-cache"] == "hit-semantic"


# The install command


def _pairs_file(path: Path, count: int) -> Path:
    """Pairs the installed model was trained on: the first `count` of each label of bench/cache_pairs.jsonl, and the
    near-misses the guard lets through."""
    kept: dict[str, list[str]] = {}
    for line in jsonl_lines((ROOT / "bench" / "cache_pairs.jsonl").read_text()):
        label = json.loads(line)["label"]
        if len(kept.setdefault(label, [])) < count:
            kept[label].append(line)
    kept["near-miss"] += [
        json.dumps({"label": "near-miss", "stored": stored, "asked": asked})
        for stored, asked in NEAR_MISSES_THE_GUARD_MISSES
    ]
    path.write_text("\n".join(line for lines in kept.values() for line in lines) + "\n")
    return path


@pytest.fixture
def exported(tmp_path) -> Path:
    """The installed model, as `crossenc_export` leaves it for the command to check and install."""
    folder = tmp_path / "exported"
    folder.mkdir()
    files = crossenc_files()
    shutil.copyfile(files["model"], folder / "model.int8.onnx")
    shutil.copyfile(files["tokenizer"], folder / "tokenizer.json")
    return folder


def _constant_model(path: Path, value: float) -> None:
    """An ONNX graph with the cross-encoder's inputs that scores every pair `value`."""
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in crossencoder.INPUT_NAMES
    ]
    nodes = [
        helper.make_node("Add", ["input_ids", "attention_mask"], ["a"]),
        helper.make_node("Add", ["a", "token_type_ids"], ["b"]),
        helper.make_node("ReduceMax", ["b"], ["c"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["c"], ["d"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["d", "zero"], ["e"]),
        helper.make_node("Add", ["e", "value"], ["score"]),
    ]
    initializers = [
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("value", TensorProto.FLOAT, [], [value]),
    ]
    output = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    graph = helper.make_graph(nodes, "constant", inputs, [output], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_the_install_checks_a_model_installs_it_and_then_leaves_it_alone(exported, tmp_path, capsys):
    folder = tmp_path / "installed"
    pairs = _pairs_file(tmp_path / "pairs.jsonl", 20)

    call_command("crossenc_train", folder=folder, pairs=[pairs], install_from=exported)
    files = crossenc_files(folder)
    manifest = json.loads(files["manifest"].read_text())
    assert manifest["in_sample"]["served"]["near-miss"] == manifest["in_sample"]["served"]["unrelated"] == 0
    assert manifest["in_sample"]["total"] == {"paraphrase": 20, "near-miss": 22, "unrelated": 20}
    # The floor's base: the paraphrases the similarity gate and the guard pass, which the model then decides.
    assert 0 < manifest["in_sample"]["served"]["paraphrase"] <= manifest["in_sample"]["paraphrases_decided"] <= 20
    assert OnnxCrossEncoder(model_file=files["model"], tokenizer_file=files["tokenizer"]).score([PARAPHRASES[0]])
    inodes = {path.name: path.stat().st_ino for path in folder.iterdir()}
    capsys.readouterr()

    call_command("crossenc_train", folder=folder, pairs=[pairs], install_from=exported)

    assert "already installed" in capsys.readouterr().out
    assert {path.name: path.stat().st_ino for path in folder.iterdir()} == inodes


def test_changed_training_pairs_install_anew(exported, tmp_path, capsys):
    folder = tmp_path / "installed"
    pairs = _pairs_file(tmp_path / "pairs.jsonl", 20)
    call_command("crossenc_train", folder=folder, pairs=[pairs], install_from=exported)
    before = json.loads(crossenc_files(folder)["manifest"].read_text())["pairs_digest"]

    _pairs_file(pairs, 21)
    call_command("crossenc_train", folder=folder, pairs=[pairs], install_from=exported)

    assert "the training pairs changed" in capsys.readouterr().out
    manifest = json.loads(crossenc_files(folder)["manifest"].read_text())
    assert manifest["pairs_digest"] != before
    assert manifest["in_sample"]["total"]["paraphrase"] == 21


@pytest.mark.parametrize(
    ("value", "failure"), [(0.0, "serves only 0 of the 20 paraphrases"), (1.0, "serves 2 of the 22 near-miss pairs")]
)
def test_the_install_refuses_a_model_that_fails_on_its_own_training_pairs(exported, tmp_path, value, failure):
    _constant_model(exported / "model.int8.onnx", value)
    folder = tmp_path / "installed"

    with pytest.raises(CommandError, match=failure):
        call_command(
            "crossenc_train", folder=folder, pairs=[_pairs_file(tmp_path / "pairs.jsonl", 20)], install_from=exported
        )
    assert [path.name for path in folder.iterdir()] == [".train.lock"]


def test_the_check_refuses_any_near_miss_more_than_half_a_percent_of_unrelated_pairs_and_too_few_paraphrases():
    totals = {"paraphrase": 100, "near-miss": 100, "unrelated": 50}
    check = partial(in_sample_failures, paraphrases_decided=95)
    assert check({"paraphrase": 90, "near-miss": 0, "unrelated": 0}, totals) == []
    assert check({"paraphrase": 90, "near-miss": 1, "unrelated": 0}, totals) == [
        "it serves 1 of the 100 near-miss pairs it was trained on"
    ]
    assert check({"paraphrase": 90, "near-miss": 0, "unrelated": 1}, totals) == [
        "it serves 1 of the 50 unrelated pairs it was trained on (at most 0.5% allowed)"
    ]
    many = {"paraphrase": 100, "near-miss": 100, "unrelated": 600}
    assert check({"paraphrase": 90, "near-miss": 0, "unrelated": 3}, many) == []
    assert check({"paraphrase": 90, "near-miss": 0, "unrelated": 4}, many) == [
        "it serves 4 of the 600 unrelated pairs it was trained on (at most 0.5% allowed)"
    ]
    # The paraphrase floor counts the paraphrases the model is asked to decide (80), not all of them (100).
    check = partial(in_sample_failures, paraphrases_decided=80)
    assert check({"paraphrase": 72, "near-miss": 0, "unrelated": 0}, totals) == []
    assert check({"paraphrase": 71, "near-miss": 0, "unrelated": 0}, totals) == [
        "it serves only 71 of the 80 paraphrases it was trained on that the similarity gate and the guard pass "
        "(at least 90% needed)"
    ]
    # None to decide measures nothing: no model passes on that.
    assert in_sample_failures({"paraphrase": 0, "near-miss": 0, "unrelated": 0}, totals, paraphrases_decided=0) == [
        "none of the 100 paraphrases it was trained on passes the similarity gate and the guard, so nothing "
        "measures it on them"
    ]


NOT_ENOUGH = (
    "it serves only 0 of the 1 paraphrases it was trained on that the similarity gate and the guard pass "
    "(at least 90% needed)"
)


@pytest.mark.parametrize(("score", "failures"), [(1.0, []), (0.0, [NOT_ENOUGH])])
def test_the_check_counts_the_paraphrases_past_the_gate_and_the_guard(exported, tmp_path, score, failures):
    _constant_model(tmp_path / "constant.onnx", score)
    model = OnnxCrossEncoder(model_file=tmp_path / "constant.onnx", tokenizer_file=exported / "tokenizer.json")
    pairs = [
        TrainingPair(stored=stored, asked=asked, label="paraphrase", domain="-", kind="paraphrase")
        for stored, asked in [
            *PARAPHRASES,  # the second below the similarity gate (given 0.5 here)
            ("can i get a refund within 30 days", "can i get a refund within 60 days"),  # the guard refuses it
        ]
    ]

    report = in_sample_check(model, pairs, np.array([0.9, 0.5, 0.9], dtype=np.float32))

    assert (report["served"]["paraphrase"], report["paraphrases_decided"]) == (int(score), 1)
    assert report["failures"] == failures


def test_the_install_needs_its_training_pairs(tmp_path):
    with pytest.raises(CommandError, match="training pairs not found"):
        call_command("crossenc_train", folder=tmp_path, pairs=[tmp_path / "missing.jsonl"])


def test_with_the_cross_encoder_off_there_is_nothing_to_install(settings, tmp_path, capsys):
    settings.LLMOPS_CACHE_CROSSENC = "off"
    call_command("crossenc_train", folder=tmp_path)
    assert "no cross-encoder to install" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
