"""Cross-validation by domain: 4 folds of 2 domains each (sorted domain names, consecutive pairs); train the
cross-encoder on the other 6 domains, score the held-out two. Saves var/crossenc/oof/<domain>.npy for each domain
and skips folds already scored (delete var/crossenc/oof/ to rerun).

    .venv/bin/python bench/crossenc/cv.py bench/cache_pairs.jsonl
"""

import json
import sys
import time

import numpy as np
from common import OUT, RECIPE, load_pairs, score, train

pairs = load_pairs(sys.argv[1])
OOF = OUT / "oof"
OOF.mkdir(parents=True, exist_ok=True)
domains = sorted({p["domain"] for p in pairs})
FOLDS = [domains[i : i + 2] for i in range(0, len(domains), 2)]
for fold in FOLDS:
    d = "+".join(fold)
    out = OOF / f"{d}.npy"
    if out.exists():
        continue
    tr = [p for p in pairs if p["domain"] not in fold]
    te = [p for p in pairs if p["domain"] in fold]
    print(f"fold {d}: train {len(tr)} test {len(te)}", flush=True)
    model, tok, secs = train(tr, RECIPE, log=lambda m: print(m, flush=True))
    t = time.time()
    s = score(model, tok, te)
    np.save(out, s)
    for dd in fold:
        np.save(OOF / f"{dd}.npy", s[[i for i, p in enumerate(te) if p["domain"] == dd]])
    with open(OOF / f"{d}.json", "w") as timing:
        json.dump({"train_seconds": secs, "score_seconds": time.time() - t, "n_test": len(te)}, timing)
    print(f"fold {d}: trained {secs:.0f}s", flush=True)
