"""Cross-validation by domain: 4 folds of 2 domains. For each fold, train the cross-encoder with the product's recipe
on the other 6 domains' tuning pairs, export it to int8 ONNX as `manage.py crossenc_train` does, and score the
fold's pairs with the product's int8 runtime (routing/cache/crossencoder.py), one pair a run as a lookup with one
candidate scores it. Saves var/crossenc/bench/oof/<fold>.npy (and .json with timings) and skips folds already scored.
Folds can run in parallel processes:

    CROSSENC_THREADS=1 .venv/bin/python bench/crossenc/cv.py [FOLD ...]     # e.g. billing+code; default every fold
"""

import json
import os
import sys
import time

import numpy as np
from common import OUT, THREADS, fold_name, folds, tuning_pairs

from routing.cache.crossenc_train import RECIPE, crossenc_export, crossenc_train
from routing.cache.crossencoder import OnnxCrossEncoder

pairs = tuning_pairs()
wanted = set(sys.argv[1:])
# A variant of the recipe, to compare before adopting it: CROSSENC_RECIPE='{"identity_share": 0.25}' writes to
# var/crossenc/bench/<variant>/ instead.
variant = json.loads(os.environ.get("CROSSENC_RECIPE", "{}"))
recipe = RECIPE | variant
if variant:
    OUT = OUT / "-".join(f"{key}{value}" for key, value in sorted(variant.items()))
OOF = OUT / "oof"
OOF.mkdir(parents=True, exist_ok=True)
for fold in folds(pairs):
    name = fold_name(fold)
    if (wanted and name not in wanted) or (OOF / f"{name}.npy").exists():
        continue
    training = [pair for pair in pairs if pair.domain not in fold]
    held_out = [pair for pair in pairs if pair.domain in fold]
    print(f"fold {name}: train {len(training)}, score {len(held_out)} ({THREADS} threads)", flush=True)
    started = time.monotonic()
    model = crossenc_train(
        training, threads=THREADS, recipe=recipe, log=lambda line, name=name: print(f"  {name} {line}", flush=True)
    )
    trained = time.monotonic() - started
    files = crossenc_export(model, OUT / "models" / name, check_pairs=[(p.stored, p.asked) for p in training[::50]])
    scorer = OnnxCrossEncoder(model_file=files["model"], tokenizer_file=files["tokenizer"])
    started = time.monotonic()
    scores = np.array([scorer.score([(pair.stored, pair.asked)])[0] for pair in held_out])
    scored = time.monotonic() - started
    np.save(OOF / f"{name}.npy", scores)
    (OOF / f"{name}.json").write_text(
        json.dumps({"threads": THREADS, "train_seconds": trained, "score_seconds": scored, "n": len(held_out)})
    )
    print(f"fold {name}: trained in {trained:.0f} s, scored in {scored:.1f} s", flush=True)
