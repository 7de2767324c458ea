"""How well the semantic cache tells a rephrased question from one that only looks similar.

Reads labelled prompt pairs (bench/cache_pairs.jsonl: a stored prompt and a later one, labelled paraphrase,
near-miss or unrelated), embeds both with the configured embedder, and prints the share of each label the
cache would serve: with the near-miss guard at the configured threshold, and with the similarity threshold
alone (naive) at several thresholds. A figure, not a test.

    .venv/bin/python bench/cache_eval.py [--pairs bench/cache_pairs.jsonl] [--show-errors]
"""

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("paraphrase", "near-miss", "unrelated")
NAIVE_THRESHOLDS = (0.60, 0.70, 0.80, 0.85, 0.90, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=str(ROOT / "bench" / "cache_pairs.jsonl"))
    parser.add_argument("--threshold", type=float, help="default: LLMOPS_CACHE_SEMANTIC_THRESHOLD")
    parser.add_argument("--show-errors", action="store_true", help="print each paraphrase refused, near-miss served")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    from routing.cache.embedders import configured_embedder
    from routing.cache.keys import normalize_prompt
    from routing.cache.near_miss import near_miss_reason

    embedder = configured_embedder()
    if embedder is None:
        raise SystemExit(f"embedder {settings.LLMOPS_CACHE_EMBEDDER} did not load")
    threshold = args.threshold if args.threshold is not None else settings.LLMOPS_CACHE_SEMANTIC_THRESHOLD
    pairs = [json.loads(line) for line in Path(args.pairs).read_text().splitlines() if line.strip()]
    stored = [normalize_prompt(pair["stored"]) for pair in pairs]
    asked = [normalize_prompt(pair["asked"]) for pair in pairs]
    vectors = embedder.embed(stored + asked)
    similarities = np.sum(vectors[: len(pairs)] * vectors[len(pairs) :], axis=1)

    totals = Counter(pair["label"] for pair in pairs)
    guarded: Counter = Counter()
    naive: dict[float, Counter] = defaultdict(Counter)
    near_miss_kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    errors = []
    for pair, a, b, similarity in zip(pairs, stored, asked, similarities, strict=True):
        for naive_threshold in NAIVE_THRESHOLDS:
            naive[naive_threshold][pair["label"]] += similarity >= naive_threshold
        reason = near_miss_reason(b, a) if similarity >= threshold else "below threshold"
        served = reason is None
        guarded[pair["label"]] += served
        if pair["label"] == "near-miss":
            near_miss_kinds[pair["kind"]][0] += served
            near_miss_kinds[pair["kind"]][1] += 1
        if served != (pair["label"] == "paraphrase"):
            errors.append(
                f"{pair['label']:<10} {similarity:.3f} {reason or 'served'}: {pair['stored']!r} / {pair['asked']!r}"
            )

    print(
        f"pairs: {', '.join(f'{totals[label]} {label}' for label in LABELS)}; embedder {settings.LLMOPS_CACHE_EMBEDDER}"
    )
    print(f"{'':<28}" + "".join(f"{label + ' served':>22}" for label in LABELS))

    def row(name: str, counts: Counter) -> None:
        cells = "".join(
            f"{f'{counts[label]}/{totals[label]} ({100 * counts[label] / max(totals[label], 1):.1f}%)':>22}"
            for label in LABELS
        )
        print(f"{name:<28}{cells}")

    row(f"guard, threshold {threshold:.2f}", guarded)
    for naive_threshold in NAIVE_THRESHOLDS:
        row(f"naive, threshold {naive_threshold:.2f}", naive[naive_threshold])
    print(
        "near-misses served with the guard, by kind: "
        + ", ".join(f"{kind} {served}/{total}" for kind, (served, total) in sorted(near_miss_kinds.items()))
    )
    if args.show_errors:
        print("\n".join(errors))


if __name__ == "__main__":
    main()
