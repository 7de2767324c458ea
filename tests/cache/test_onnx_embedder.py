"""The default embedder: all-MiniLM-L6-v2 through ONNX Runtime, exported from the model package, torch-free."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.management import call_command

from routing.cache.embedders import OnnxEmbedder, SentenceTransformerEmbedder
from routing.cache.onnx_model import minilm_model_folder, onnx_model_path, pooling_is_mean_then_normalize

ROOT = Path(settings.BASE_DIR)
SENTENCES = [
    "How do I reset my password?",
    "Is Mars larger than Venus?",
    "PUT vs PATCH",
    "Write a SQL query that counts the orders of each customer placed in 2024, newest customers first.",
    # Past the tokenizer.json's own 128-token cut, inside the model's 256.
    "Summarise the refund policy for orders that arrived late. " * 14,
]


@pytest.fixture(scope="module")
def torch_vectors():
    return SentenceTransformerEmbedder().embed(SENTENCES)


@pytest.mark.parametrize(("precision", "least_cosine"), [("int8", 0.98), ("fp32", 0.9999)])
def test_onnx_embeddings_agree_with_torch_batched_and_alone(torch_vectors, precision, least_cosine):
    embedder = OnnxEmbedder(precision=precision)
    batched = embedder.embed(SENTENCES)
    alone = np.vstack([embedder.embed([sentence]) for sentence in SENTENCES])

    assert batched.shape == (len(SENTENCES), 384) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)
    for vectors in (batched, alone):
        cosines = np.sum(vectors * torch_vectors, axis=1)
        assert cosines.min() >= least_cosine, dict(zip(SENTENCES, cosines.round(4), strict=True))


def _python(code: str, env: dict[str, str]) -> dict:
    finished = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


WORKER_EMBEDS = """
import json, sys
import llmops.asgi
from routing.cache.embedders import configured_embedder
embedder = configured_embedder()
vectors = embedder.embed(["How do I reset my password?", "How can I reset my password?"])
print(json.dumps({
    "embedder": type(embedder).__name__,
    "similarity": float(vectors[0] @ vectors[1]),
    "model_file": str(embedder.model_file),
    "torch": sorted(name for name in sys.modules if name == "torch" or name.startswith("torch.")),
}))
"""


def _worker_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "LLMOPS_CACHE_EMBEDDER"}
    return {**env, "DJANGO_SETTINGS_MODULE": "llmops.settings", "LOG_LEVEL": "WARNING", **extra}


def test_a_gateway_worker_embeds_with_the_default_embedder_without_importing_torch():
    report = _python(WORKER_EMBEDS, _worker_env())

    assert report["embedder"] == "OnnxEmbedder"
    assert report["similarity"] > 0.9
    assert report["torch"] == []


def test_workers_starting_together_without_the_file_export_it_once(tmp_path):
    """Each worker finds the model missing; one exports (in a child process, so neither imports torch), the other
    waits for it and loads the same file."""
    env = _worker_env(LLMOPS_CACHE_EMBEDDER_DIR=str(tmp_path))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_EMBEDS], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    reports, logs = [], ""
    for worker in workers:
        output, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors.decode()[-3000:]
        reports.append(json.loads(output.decode().strip().splitlines()[-1]))
        logs += errors.decode()

    assert logs.count("exporting the semantic cache's ONNX model") == 1, logs
    int8 = onnx_model_path(folder=tmp_path, precision="int8")
    assert [report["model_file"] for report in reports] == [str(int8)] * 2
    assert all(report["torch"] == [] and report["similarity"] > 0.9 for report in reports)
    fp32 = onnx_model_path(folder=tmp_path, precision="fp32")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([".export.lock", int8.name, fp32.name])


WORKER_LOADS = """
import json
import llmops.asgi
from routing.cache.embedders import configured_embedder
print(json.dumps({"embedder": None if configured_embedder() is None else "loaded"}))
"""


def test_an_export_that_does_not_finish_in_time_is_stopped_and_semantic_caching_is_off(tmp_path):
    """The export takes far more than a second (it imports torch); a worker that waited for it without a bound
    would hold every cacheable request behind it."""
    env = _worker_env(LLMOPS_CACHE_EMBEDDER_DIR=str(tmp_path), LLMOPS_CACHE_EMBEDDER_EXPORT_TIMEOUT="1")
    finished = subprocess.run(
        [sys.executable, "-c", WORKER_LOADS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    assert json.loads(finished.stdout.strip().splitlines()[-1]) == {"embedder": None}
    assert "semantic cache off" in finished.stderr and "did not finish within 1 s" in finished.stderr
    assert not onnx_model_path(folder=tmp_path, precision="int8").exists()


def test_the_export_command_leaves_exported_files_alone(tmp_path, capsys):
    for precision in ("int8", "fp32"):
        exported = onnx_model_path(folder=settings.LLMOPS_CACHE_EMBEDDER_DIR, precision=precision)
        shutil.copy(exported, onnx_model_path(folder=tmp_path, precision=precision))
    inodes = {path.name: path.stat().st_ino for path in tmp_path.iterdir()}

    call_command("embedder_export", folder=tmp_path)

    assert "already exported" in capsys.readouterr().out
    assert {path.name: path.stat().st_ino for path in tmp_path.iterdir()} == inodes


def test_a_model_folder_that_pools_otherwise_is_refused(tmp_path):
    source = minilm_model_folder()
    (tmp_path / "1_Pooling").mkdir()
    shutil.copy(source / "modules.json", tmp_path / "modules.json")
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert pooling_is_mean_then_normalize(tmp_path)

    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode_cls_token": True}))
    assert not pooling_is_mean_then_normalize(tmp_path)
