"""Cross-validated table: per held-out fold (2 domains) and pooled, share served per label for rules (a)-(d).
Thresholds for fold k are chosen on the out-of-fold cross-encoder scores of the other 6 domains. Reads
var/crossenc/oof/ (cv.py) and the features file (features.py); writes var/crossenc/cv_thresholds.json (read by
final.py).

    .venv/bin/python bench/crossenc/cv_report.py bench/cache_pairs.jsonl var/crossenc/feats_tuning.npz
"""

import json
import sys
from collections import Counter

import numpy as np
from common import LABELS, OUT, load_pairs
from rules import RULES, choose, serve

pairs = load_pairs(sys.argv[1])
f = np.load(sys.argv[2])
sim, ok = f["sim"], f["guard_ok"]
labels = np.array([p["label"] for p in pairs])
kinds = np.array([p["kind"] for p in pairs])
dom = np.array([p["domain"] for p in pairs])
domains = sorted(set(dom))
ce = np.zeros(len(pairs))
for d in domains:
    ce[dom == d] = np.load(OUT / "oof" / f"{d}.npy")

served = {r: np.zeros(len(pairs), bool) for r in RULES}
fold_t = {}
FOLDS = ["+".join(domains[i : i + 2]) for i in range(0, len(domains), 2)]
fold_of = np.array([next(f for f in FOLDS if d in f.split("+")) for d in dom])
for d in FOLDS:
    te, tr = fold_of == d, fold_of != d
    t = choose(labels[tr], sim[tr], ok[tr], ce[tr])
    fold_t[d] = t
    s = serve(sim[te], ok[te], ce[te], t)
    for r in RULES:
        served[r][te] = s[r]


def share(mask, lab):
    n = (labels[mask] == lab).sum()
    k = (served_r[mask] & (labels[mask] == lab)).sum()
    return f"{k}/{n} {100 * k / n:5.1f}%" if n else "-"


print(
    "Leave-one-domain-out; thresholds for each fold chosen on the OOF scores of the other 6 domains"
    " (4 folds of 2 domains)."
)
for r, desc in RULES.items():
    served_r = served[r]
    print(f"\n({r}) {desc}")
    print(f"{'fold':<14}" + "".join(f"{lab:>18}" for lab in LABELS) + ("   threshold" if r != "a" else ""))
    for d in FOLDS:
        m = fold_of == d
        print(
            f"{d:<14}"
            + "".join(f"{share(m, lab):>18}" for lab in LABELS)
            + (f"   {fold_t[d][r]:.4f}" if r != "a" else "")
        )
    m = np.ones(len(pairs), bool)
    print(f"{'POOLED':<14}" + "".join(f"{share(m, lab):>18}" for lab in LABELS))
    nm = labels == "near-miss"
    bykind = Counter(kinds[served_r & nm])
    tot = Counter(kinds[nm])
    print("  near-misses served by kind:", ", ".join(f"{k} {bykind[k]}/{tot[k]}" for k in sorted(tot)))

final_t = choose(labels, sim, ok, ce)
print(
    "\nThresholds chosen on all pooled OOF scores (used by the final model):",
    {k: round(v, 4) for k, v in final_t.items()},
)
with open(OUT / "cv_thresholds.json", "w") as out:
    json.dump({"thresholds": final_t, "fold_thresholds": fold_t}, out, indent=1)
