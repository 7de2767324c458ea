import fcntl
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from routing.cache.crossenc_train import (
    RECIPE,
    crossenc_export,
    crossenc_train,
    in_sample_check,
    pair_similarities,
    training_pairs_digest,
    training_pairs_load,
)
from routing.cache.crossencoder import RECIPE_REVISION, OnnxCrossEncoder, crossenc_files
from routing.cache.embedders import configured_embedder


class Command(BaseCommand):
    help = (
        "Train the semantic cache's cross-encoder on labelled prompt pairs (LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS), "
        "export it to int8 ONNX, check it on those pairs with the gateway's rule, and install it into "
        "LLMOPS_CACHE_CROSSENC_DIR. Does nothing when the model trained on the same pairs is there, unless --force."
    )

    def add_arguments(self, parser):
        parser.add_argument("--pairs", nargs="+", type=Path, metavar="FILE", help="default: the setting's files")
        parser.add_argument("--folder", type=Path, help="where to install (default: LLMOPS_CACHE_CROSSENC_DIR)")
        parser.add_argument(
            "--threads", type=int, default=1, help="torch threads for training (the model depends on it; default 1)"
        )
        parser.add_argument("--force", action="store_true", help="train and install again over an installed model")
        parser.add_argument(
            "--install-from",
            type=Path,
            metavar="DIR",
            help="instead of training, check and install a model exported elsewhere (model.int8.onnx, tokenizer.json)",
        )

    def handle(self, *args, pairs, folder, threads, force, install_from, **options):
        if settings.LLMOPS_CACHE_CROSSENC != "on" and not force:
            self.stdout.write("LLMOPS_CACHE_CROSSENC is off: no cross-encoder to install")
            return
        folder = Path(folder or settings.LLMOPS_CACHE_CROSSENC_DIR)
        paths = [Path(path) for path in (pairs or settings.LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS)]
        files = crossenc_files(folder)
        if not force and self._installed(files, paths):
            return
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise CommandError(f"training pairs not found: {', '.join(missing)}")
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".train.lock", "w") as lock:
            # Two installs at once (a deploy's hosts sharing the folder): the second finds the first's model.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not force and self._installed(files, paths):
                return
            with tempfile.TemporaryDirectory(dir=folder, prefix=".train-") as scratch:
                self._install(files, paths, Path(scratch), threads=threads, install_from=install_from)

    def _installed(self, files: dict[str, Path], paths: list[Path]) -> bool:
        if not all(path.exists() for path in files.values()):
            return False
        if not all(path.is_file() for path in paths):
            self.stdout.write(f"cross-encoder installed: {files['model']} (its training pairs are not here to compare)")
            return True
        manifest = json.loads(files["manifest"].read_text())
        if manifest.get("pairs_digest") != training_pairs_digest(paths):
            self.stdout.write("the training pairs changed since the installed cross-encoder was trained: training anew")
            return False
        self.stdout.write(f"cross-encoder already installed: {files['model']}")
        return True

    def _install(self, files: dict[str, Path], paths: list[Path], scratch: Path, *, threads, install_from) -> None:
        pairs = training_pairs_load(paths)
        digest = training_pairs_digest(paths)
        train_seconds = None
        if install_from is not None:
            exported = {"model": scratch / "model.int8.onnx", "tokenizer": scratch / "tokenizer.json"}
            for path in exported.values():
                shutil.copyfile(Path(install_from) / path.name, path)
        else:
            self.stdout.write(f"training the cross-encoder on {len(pairs)} pairs with {threads} thread(s)")
            started = time.monotonic()
            model = crossenc_train(pairs, threads=threads, log=self.stdout.write)
            train_seconds = round(time.monotonic() - started, 1)
            exported = crossenc_export(model, scratch, check_pairs=[(p.stored, p.asked) for p in pairs[::25]])
        embedder = configured_embedder()
        if embedder is None:
            raise CommandError("the embedder did not load (LLMOPS_CACHE_EMBEDDER; `manage.py embedder_export`)")
        candidate = OnnxCrossEncoder(model_file=exported["model"], tokenizer_file=exported["tokenizer"])
        report = in_sample_check(candidate, pairs, pair_similarities(embedder, pairs))
        figures = ", ".join(f"{label} {report['served'][label]}/{report['total'][label]}" for label in report["total"])
        figures += f" ({report['paraphrases_decided']} paraphrases past the similarity gate and the guard)"
        if report["failures"]:
            raise CommandError(f"cross-encoder not installed: {'; '.join(report['failures'])} (served: {figures})")
        manifest = {
            "recipe_revision": RECIPE_REVISION,
            "recipe": RECIPE,
            "trained_here": install_from is None,
            "threads": threads if install_from is None else None,
            "torch": importlib.metadata.version("torch"),
            "train_seconds": train_seconds,
            "pairs": [str(path) for path in paths],
            "pairs_digest": digest,
            "in_sample": {
                "similarity_threshold": settings.LLMOPS_CACHE_SEMANTIC_THRESHOLD,
                "crossenc_threshold": settings.LLMOPS_CACHE_CROSSENC_THRESHOLD,
                "served": report["served"],
                "total": report["total"],
                "paraphrases_decided": report["paraphrases_decided"],
            },
        }
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=1))
        # The manifest last: a model is installed once all three files are in place.
        os.replace(exported["tokenizer"], files["tokenizer"])
        os.replace(exported["model"], files["model"])
        os.replace(scratch / "manifest.json", files["manifest"])
        self.stdout.write(
            f"cross-encoder installed: {files['model']} ({files['model'].stat().st_size / 1e6:.1f} MB); "
            f"in-sample served: {figures}"
        )
