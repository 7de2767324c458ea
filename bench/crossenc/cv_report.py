"""The cross-validated table, by fold (2 domains held out) and pooled: paraphrases, near-misses and unrelated pairs
served by (a) today's rule and (c2), on the int8 out-of-fold scores (cv.py) and the gateway's similarity and guard
(features.py). (c2)'s threshold for a fold is chosen on the out-of-fold scores of the other 3 folds; the threshold
to ship (LLMOPS_CACHE_CROSSENC_THRESHOLD) on all pooled out-of-fold scores. Writes var/crossenc/bench/cv.json.

    [CROSSENC_RECIPE='{"identity_share": 0.25}'] .venv/bin/python bench/crossenc/cv_report.py
"""

import json
import os
from collections import Counter

import numpy as np
from common import LABELS, OUT, RULES, choose_threshold, fold_name, folds, serve, tuning_pairs

pairs = tuning_pairs()
features = np.load(OUT / "features.npz")
# The scores of a recipe variant cv.py ran (CROSSENC_RECIPE), when given.
variant = json.loads(os.environ.get("CROSSENC_RECIPE", "{}"))
SCORES = OUT / "-".join(f"{key}{value}" for key, value in sorted(variant.items())) if variant else OUT
sim, guard_ok = features["sim"], features["guard_ok"]
labels = np.array([pair.label for pair in pairs])
kinds = np.array([pair.kind for pair in pairs])
names = [fold_name(fold) for fold in folds(pairs)]
fold_of = np.array([next(fold_name(f) for f in folds(pairs) if pair.domain in f) for pair in pairs])
ce = np.zeros(len(pairs))
for name in names:
    ce[fold_of == name] = np.load(SCORES / "oof" / f"{name}.npy")

served = {rule: np.zeros(len(pairs), bool) for rule in RULES}
fold_threshold = {}
for name in names:
    held, rest = fold_of == name, fold_of != name
    fold_threshold[name] = choose_threshold(labels[rest], sim[rest], ce[rest])
    for rule, mask in serve(sim[held], guard_ok[held], ce[held], fold_threshold[name]).items():
        served[rule][held] = mask


def share(mask: np.ndarray, rule: str, label: str) -> str:
    total = int((labels[mask] == label).sum())
    count = int((served[rule][mask] & (labels[mask] == label)).sum())
    return f"{count}/{total} {100 * count / total:5.1f}%" if total else "-"


print(
    f"{len(pairs)} tuning pairs ({', '.join(f'{n} {label}' for label, n in Counter(labels).most_common())}); "
    "leave two domains out (4 folds), int8 out-of-fold cross-encoder scores; (c2)'s threshold for each fold chosen "
    "on the other 3 folds' scores"
)
for rule, description in RULES.items():
    print(f"\n({rule}) {description}")
    print(f"{'fold':<14}" + "".join(f"{label:>18}" for label in LABELS) + ("   threshold" if rule != "a" else ""))
    for name in names:
        mask = fold_of == name
        print(
            f"{name:<14}"
            + "".join(f"{share(mask, rule, label):>18}" for label in LABELS)
            + (f"   {fold_threshold[name]:.4f}" if rule != "a" else "")
        )
    everything = np.ones(len(pairs), bool)
    print(f"{'POOLED':<14}" + "".join(f"{share(everything, rule, label):>18}" for label in LABELS))
    near_miss = labels == "near-miss"
    by_kind, kind_totals = Counter(kinds[served[rule] & near_miss]), Counter(kinds[near_miss])
    print("  near-misses served by kind:", ", ".join(f"{k} {by_kind[k]}/{kind_totals[k]}" for k in sorted(kind_totals)))


def alone_at(t: float) -> str:
    """What the cross-encoder alone (sim >= 0.65, guard off) serves at t, by label."""
    alone = (sim >= 0.65) & (ce >= t)
    return ", ".join(
        f"{label} {int((alone & (labels == label)).sum())}/{int((labels == label).sum())}" for label in LABELS
    )


shipped = choose_threshold(labels, sim, ce)
strict = choose_threshold(labels, sim, ce, no_unrelated=True)
print(f"\nthreshold chosen on all pooled out-of-fold scores (LLMOPS_CACHE_CROSSENC_THRESHOLD): {shipped:.4f}")
print(f"  there the cross-encoder alone (sim>=0.65, guard off) serves {alone_at(shipped)}")
with_guard = (sim >= 0.65) & guard_ok & (ce >= strict)
print(
    f"if no unrelated pair may be served by the cross-encoder alone: {strict:.4f}; there (c2) serves, pooled "
    "out-of-fold, "
    + ", ".join(
        f"{label} {int((with_guard & (labels == label)).sum())}/{int((labels == label).sum())}" for label in LABELS
    )
)
(SCORES / "cv.json").write_text(
    json.dumps({"threshold": shipped, "fold_thresholds": fold_threshold, "no_unrelated_threshold": strict}, indent=1)
)
