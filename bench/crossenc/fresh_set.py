"""Join writers' files of labelled pairs into one fresh held-out set: each line checked against the pairs' schema,
then the pairs dropped that share a question (normalised as the cache and the training normalise prompts: case,
spaces, edge punctuation) with a tuning file or a set scored before, and the pairs repeated between writers.
Prints what was kept and dropped, by label and by writer.

    .venv/bin/python bench/crossenc/fresh_set.py WRITER.jsonl [WRITER.jsonl ...] --out SET.jsonl [--exclude FILE ...]

--exclude defaults to the tuning files (LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS) and the held-out sets already in
bench/ (cache_heldout_*.jsonl). Writers work from pairs_brief.md and see nothing else.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from common import ROOT, TUNING

from core.jsonl import jsonl_lines
from routing.cache.crossenc_train import LABELS, training_pairs_load
from routing.cache.keys import normalize_prompt

KEYS = {"domain", "label", "kind", "stored", "asked"}
NEAR_MISS_KINDS = {
    "order",
    "number",
    "ordinal",
    "version",
    "operator",
    "http-method",
    "locale",
    "negation",
    "antonym",
    "entity",
}


def _problem(row) -> str | None:
    if not isinstance(row, dict) or set(row) != KEYS:
        return f"keys must be exactly {sorted(KEYS)}"
    if not all(isinstance(row[key], str) and row[key].strip() for key in KEYS):
        return "every value must be a non-empty string"
    if row["label"] not in LABELS:
        return f"label {row['label']!r} is not one of {LABELS}"
    expected = NEAR_MISS_KINDS if row["label"] == "near-miss" else {row["label"]}
    if row["kind"] not in expected:
        return f"kind {row['kind']!r} does not fit label {row['label']!r}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("writers", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--exclude", nargs="*", type=Path)
    args = parser.parse_args()
    excluded = (
        args.exclude if args.exclude is not None else [*TUNING, *sorted(ROOT.glob("bench/cache_heldout_*.jsonl"))]
    )
    seen_questions = {question for pair in training_pairs_load(excluded) for question in (pair.stored, pair.asked)}

    kept, seen_pairs = [], set()
    for path in args.writers:
        counts = Counter()
        for number, line in enumerate(jsonl_lines(path.read_text()), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if problem := _problem(row):
                print(f"{path}:{number}: {problem}", file=sys.stderr)
                return 1
            pair = (normalize_prompt(row["stored"]), normalize_prompt(row["asked"]))
            if pair[0] == pair[1]:
                counts["dropped: the same question twice"] += 1
            elif pair[0] in seen_questions or pair[1] in seen_questions:
                counts["dropped: a question already seen"] += 1
            elif pair in seen_pairs or pair[::-1] in seen_pairs:
                counts["dropped: repeated"] += 1
            else:
                seen_pairs.add(pair)
                kept.append(row)
                counts[row["label"]] += 1
        print(f"{path.name}: " + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())))
    args.out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
    labels = Counter(row["label"] for row in kept)
    print(f"{args.out}: {len(kept)} pairs, " + ", ".join(f"{label} {labels[label]}" for label in LABELS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
