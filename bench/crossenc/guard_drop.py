"""Which of the near-miss guard's checks the cross-encoder could stand in for: a greedy pass over the cross-validation's
out-of-fold decisions (cv.py's scores at cv_report.py's pooled threshold, features.py's similarity). Starting from the
whole guard, it drops the check whose removal serves the most more paraphrases without serving one more near-miss or
unrelated pair, and repeats until no check qualifies. Prints each step and the checks left out.

    .venv/bin/python bench/crossenc/guard_drop.py
"""

import json

import numpy as np
from common import OUT, SIM_GATE, fold_name, folds, tuning_pairs

from routing.cache.near_miss import CHECKS, prompt_details

pairs = tuning_pairs()
features = np.load(OUT / "features.npz")
sim = features["sim"]
labels = np.array([pair.label for pair in pairs])
fold_of = np.array([next(fold_name(f) for f in folds(pairs) if pair.domain in f) for pair in pairs])
ce = np.zeros(len(pairs))
for name in {fold_name(fold) for fold in folds(pairs)}:
    ce[fold_of == name] = np.load(OUT / "oof" / f"{name}.npy")
threshold = json.loads((OUT / "cv.json").read_text())["threshold"]
candidates = (sim >= SIM_GATE) & (ce >= threshold)


def checks_firing(pair) -> frozenset[int]:
    a, b = prompt_details(pair.asked), prompt_details(pair.stored)
    return frozenset(index for index, (_, disagree) in enumerate(CHECKS) if disagree(a, b))


firing = [checks_firing(pair) if candidate else frozenset() for pair, candidate in zip(pairs, candidates, strict=True)]


def served(dropped: set[int]) -> np.ndarray:
    return candidates & np.array([not (fires - dropped) for fires in firing])


def counts(mask: np.ndarray) -> tuple[int, int]:
    return int((mask & (labels == "paraphrase")).sum()), int((mask & (labels != "paraphrase")).sum())


def check_name(index: int) -> str:
    reason, disagree = CHECKS[index]
    return f"{reason} ({getattr(disagree, '__name__', 'lambda')})"


dropped: set[int] = set()
paraphrases, wrong = counts(served(dropped))
print(f"threshold {threshold:.4f}; the whole guard serves {paraphrases} paraphrases and {wrong} wrong answers")
while True:
    gains = []
    for index in set(range(len(CHECKS))) - dropped:
        more, more_wrong = counts(served(dropped | {index}))
        if more_wrong == wrong and more > paraphrases:
            gains.append((more, index))
    if not gains:
        break
    paraphrases, index = max(gains)
    dropped.add(index)
    print(f"drop {check_name(index)}: {paraphrases} paraphrases, {wrong} wrong answers")
print("checks left out:", ", ".join(check_name(index) for index in sorted(dropped)) or "none")
