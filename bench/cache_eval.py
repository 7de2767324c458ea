"""How well the semantic cache tells a rephrased question from one that only looks similar.

Reads labelled prompt pairs, one JSON object a line: {"domain", "label" (paraphrase | near-miss | unrelated),
"kind" (for a near-miss, what changed: order, number, antonym, ...), "stored", "asked"}. Decides each pair as the
gateway decides a lookup of the asked prompt whose one candidate is the stored one (routing/cache/crossencoder.py
pair_served): the configured embedder's similarity against LLMOPS_CACHE_SEMANTIC_THRESHOLD, the near-miss guard,
then the cross-encoder against LLMOPS_CACHE_CROSSENC_THRESHOLD (unless LLMOPS_CACHE_CROSSENC=off). Prints, for that
rule: the precision and recall of "served" (a paraphrase is the positive class), the share of each label served, of
each near-miss kind and of each domain, and why paraphrases were refused; then the same shares for the similarity
threshold alone (naive) and with the guard alone at several thresholds, and with the guard and the cross-encoder at
several cross-encoder thresholds; what one guard call and one cross-encoder candidate cost; and, with
--cross-validate, the guard-only rule's similarity threshold chosen on part of the pairs and measured on the rest
(leave one domain out, and a fixed 2/3-1/3 split). A figure, not a test.

    .venv/bin/python bench/cache_eval.py [--pairs FILE ...] [--threshold 0.65] [--crossenc-threshold T]
                                         [--show-errors] [--cross-validate]

--pairs defaults to bench/cache_pairs.jsonl; pass a held-out file, or several files, to measure on pairs nothing was
tuned on. The cross-encoder was trained on bench/cache_pairs.jsonl, bench/cache_holdout.jsonl and
bench/cache_pairs_2.jsonl, so its figures on those are in-sample. --threshold and --crossenc-threshold override the
settings for this run.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("paraphrase", "near-miss", "unrelated")
NAIVE_THRESHOLDS = (0.70, 0.80, 0.85, 0.90, 0.95)
GUARD_THRESHOLDS = (0.60, 0.65, 0.70, 0.75, 0.80, 0.85)
CROSSENC_THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9)
# The targets a threshold is chosen for: the most paraphrases served with at most this share of near-misses served
# and no unrelated pair.
NEAR_MISS_TARGET = 0.005


def _load(paths: list[str]) -> list[dict]:
    from core.jsonl import jsonl_lines

    pairs = []
    for path in paths:
        for number, line in enumerate(jsonl_lines(Path(path).read_text()), start=1):
            if not line.strip():
                continue
            pair = json.loads(line)
            if pair.get("label") not in LABELS or not pair.get("stored") or not pair.get("asked"):
                raise SystemExit(f"{path}:{number}: needs a label in {LABELS}, a stored and an asked prompt")
            pair.setdefault("domain", "-")
            pair.setdefault("kind", pair["label"])
            pairs.append(pair)
    return pairs


def _share(served: int, total: int) -> str:
    return f"{served}/{total} ({100 * served / total:.1f}%)" if total else "-"


def _table(title: str, groups: dict[str, Counter], totals: dict[str, Counter], labels=LABELS) -> None:
    print(f"\n{title:<24}" + "".join(f"{label + ' served':>22}" for label in labels))
    for name in sorted(groups):
        print(f"{name:<24}" + "".join(f"{_share(groups[name][label], totals[name][label]):>22}" for label in labels))


def _split(pair: dict) -> str:
    """A fixed third of the pairs, by a hash of their text: the same pairs whatever the file order."""
    digest = hashlib.sha256(f"{pair['stored']}\n{pair['asked']}".encode()).hexdigest()
    return "third" if int(digest, 16) % 3 == 0 else "rest"


def _served(rows: list[tuple], threshold: float, crossenc_threshold: float | None = None) -> Counter:
    """Served by similarity and the guard, and the cross-encoder's score when a threshold is given."""
    served: Counter = Counter()
    for label, similarity, reason, score in rows:
        passes = crossenc_threshold is None or score >= crossenc_threshold
        served[label] += reason is None and similarity >= threshold and passes
    return served


def _choose_threshold(rows: list[tuple]) -> float:
    totals = Counter(label for label, *_ in rows)
    best, best_served = GUARD_THRESHOLDS[-1], -1
    for threshold in GUARD_THRESHOLDS:
        served = _served(rows, threshold)
        within = served["near-miss"] <= NEAR_MISS_TARGET * totals["near-miss"] and not served["unrelated"]
        if within and served["paraphrase"] > best_served:
            best, best_served = threshold, served["paraphrase"]
    return best


def _cross_validate(pairs: list[dict], rows: list[tuple]) -> None:
    """The threshold chosen on the other folds, the figures on the fold left out, summed over the folds. The
    guard's rules were written by hand on every pair, so this checks the threshold choice, not the rules (the
    docs give the rules' own held-out figures)."""
    folds = {
        f"domain {domain}": [pair["domain"] == domain for pair in pairs]
        for domain in sorted({p["domain"] for p in pairs})
    }
    schemes = {"leave one domain out": folds, "fixed 2/3-1/3 split": {"third": [_split(p) == "third" for p in pairs]}}
    for scheme, scheme_folds in schemes.items():
        held_totals: Counter = Counter()
        held_served: Counter = Counter()
        print(f"\ncross-validated, {scheme}:")
        for name, held in scheme_folds.items():
            tuning = [row for row, out in zip(rows, held, strict=True) if not out]
            held_out = [row for row, out in zip(rows, held, strict=True) if out]
            threshold = _choose_threshold(tuning)
            served, totals = _served(held_out, threshold), Counter(label for label, *_ in held_out)
            held_served += served
            held_totals += totals
            print(f"  {name:<22} threshold {threshold:.2f}: " + ", ".join(_share(served[x], totals[x]) for x in LABELS))
        print(f"  {'all folds':<37}" + ", ".join(f"{x} {_share(held_served[x], held_totals[x])}" for x in LABELS))


def _guard_cost_us(pairs: list[dict], stored: list[str], asked: list[str]) -> tuple[float, float]:
    """Microseconds a call: on prompts never seen (details extracted for both) and on prompts seen before."""
    from routing.cache.near_miss import near_miss_reason, prompt_details

    rounds = max(1, 2000 // len(pairs))
    started = time.perf_counter()
    for _ in range(rounds):
        for a, b in zip(stored, asked, strict=True):
            prompt_details.cache_clear()
            near_miss_reason(b, a)
    cold = (time.perf_counter() - started) / (rounds * len(pairs))
    for a, b in zip(stored, asked, strict=True):
        near_miss_reason(b, a)
    started = time.perf_counter()
    for _ in range(rounds):
        for a, b in zip(stored, asked, strict=True):
            near_miss_reason(b, a)
    warm = (time.perf_counter() - started) / (rounds * len(pairs))
    return cold * 1e6, warm * 1e6


def _crossenc_cost_ms(model, stored: list[str], asked: list[str]) -> dict[str, tuple[float, float]]:
    """Milliseconds per candidate on this thread, wall and CPU (CPU moves less with other load): scored alone, as a
    lookup scores each of its candidates, and five for the same asked prompt in one run, for comparison."""
    pairs = list(zip(stored, asked, strict=True))[:200]
    runs = {
        "alone": [[pair] for pair in pairs],
        "in a run of 5": [[(other, prompt) for other in stored[i : i + 5]] for i, (_, prompt) in enumerate(pairs)],
    }
    costs = {}
    for name, batches in runs.items():
        for batch in batches[:10]:
            model.score(batch)
        wall, cpu = time.perf_counter(), time.thread_time()
        for batch in batches:
            model.score(batch)
        candidates = sum(map(len, batches))
        costs[name] = ((time.perf_counter() - wall) / candidates * 1e3, (time.thread_time() - cpu) / candidates * 1e3)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=[str(ROOT / "bench" / "cache_pairs.jsonl")], metavar="FILE")
    parser.add_argument("--threshold", type=float, help="similarity gate; default: LLMOPS_CACHE_SEMANTIC_THRESHOLD")
    parser.add_argument("--crossenc-threshold", type=float, help="default: LLMOPS_CACHE_CROSSENC_THRESHOLD")
    parser.add_argument("--show-errors", action="store_true", help="print each paraphrase refused, each other served")
    parser.add_argument(
        "--cross-validate", action="store_true", help="choose the threshold on some pairs, test on others"
    )
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    from routing.cache.crossenc_train import pair_similarities, training_pairs_load
    from routing.cache.crossencoder import configured_crossencoder, crossenc_on, pair_served
    from routing.cache.embedders import configured_embedder
    from routing.cache.near_miss import near_miss_reason

    if args.threshold is not None:
        settings.LLMOPS_CACHE_SEMANTIC_THRESHOLD = args.threshold
    if args.crossenc_threshold is not None:
        settings.LLMOPS_CACHE_CROSSENC_THRESHOLD = args.crossenc_threshold
    threshold = settings.LLMOPS_CACHE_SEMANTIC_THRESHOLD
    crossenc_threshold = settings.LLMOPS_CACHE_CROSSENC_THRESHOLD
    embedder = configured_embedder()
    if embedder is None:
        raise SystemExit(f"embedder {settings.LLMOPS_CACHE_EMBEDDER} did not load")
    crossencoder = configured_crossencoder()
    if crossencoder is None and crossenc_on():
        raise SystemExit("the cross-encoder did not load: `manage.py crossenc_train` installs it")
    pairs = _load(args.pairs)
    prepared = training_pairs_load(args.pairs)
    stored = [pair.stored for pair in prepared]
    asked = [pair.asked for pair in prepared]
    similarities = pair_similarities(embedder, prepared)
    # Each pair alone, as a lookup with one candidate scores it (for the tables below; the decision is pair_served's).
    scores = (
        np.array([crossencoder.score([pair])[0] for pair in zip(stored, asked, strict=True)])
        if crossencoder is not None
        else np.full(len(pairs), np.nan)
    )
    rule = (
        f"similarity >= {threshold:.2f} AND guard AND cross-encoder >= {crossenc_threshold:.4f}"
        if crossenc_on()
        else f"similarity >= {threshold:.2f} AND guard (cross-encoder off)"
    )

    totals: Counter = Counter()
    guarded: Counter = Counter()
    naive: dict[float, Counter] = defaultdict(Counter)
    by_domain_total: dict[str, Counter] = defaultdict(Counter)
    by_domain: dict[str, Counter] = defaultdict(Counter)
    by_kind_total: dict[str, Counter] = defaultdict(Counter)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    refusals: Counter = Counter()
    errors = []
    rows = []
    for pair, a, b, similarity, score in zip(pairs, stored, asked, similarities, scores, strict=True):
        label = pair["label"]
        totals[label] += 1
        for naive_threshold in NAIVE_THRESHOLDS:
            naive[naive_threshold][label] += similarity >= naive_threshold
        rows.append((label, similarity, near_miss_reason(b, a), score))
        served = pair_served(a, b, float(similarity))
        guarded[label] += served
        by_domain_total[pair["domain"]][label] += 1
        by_domain[pair["domain"]][label] += served
        if label == "near-miss":
            by_kind_total[pair["kind"]][label] += 1
            by_kind[pair["kind"]][label] += served
        if served:
            reason = "served"
        elif similarity < threshold:
            reason = "below threshold"
        else:
            reason = rows[-1][2] or "cross-encoder"
        if label == "paraphrase" and not served:
            refusals[reason.split(":")[0]] += 1
        if served != (label == "paraphrase"):
            errors.append(
                f"{label:<10} {pair['domain']:<8} {pair['kind']:<12} {similarity:.3f} ce {score:.3f} {reason}: "
                f"{pair['stored']!r} / {pair['asked']!r}"
            )

    served_total = sum(guarded.values())
    precision = guarded["paraphrase"] / served_total if served_total else 1.0
    recall = guarded["paraphrase"] / totals["paraphrase"] if totals["paraphrase"] else 0.0
    print(
        f"pairs: {len(pairs)} ({', '.join(f'{totals[label]} {label}' for label in LABELS)}) from "
        f"{', '.join(Path(path).name for path in args.pairs)}; embedder {settings.LLMOPS_CACHE_EMBEDDER}"
    )
    print(f"rule: {rule}: served precision {precision:.3f}, recall {recall:.3f}")
    _table("served by label", {"rule": guarded}, {"rule": totals})
    print(
        "\n".join(
            f"{f'naive {t:.2f}':<24}" + "".join(f"{_share(naive[t][x], totals[x]):>22}" for x in LABELS)
            for t in NAIVE_THRESHOLDS
        )
    )
    print(
        "\n".join(
            f"{f'guard {t:.2f}':<24}" + "".join(f"{_share(_served(rows, t)[x], totals[x]):>22}" for x in LABELS)
            for t in GUARD_THRESHOLDS
        )
    )
    if crossencoder is not None:
        print(
            "\n".join(
                f"{f'guard {threshold:.2f} + ce {t:.2f}':<24}"
                + "".join(f"{_share(_served(rows, threshold, t)[x], totals[x]):>22}" for x in LABELS)
                for t in CROSSENC_THRESHOLDS
            )
        )
    _table("by domain (rule)", by_domain, by_domain_total)
    _table("near-miss by kind", by_kind, by_kind_total, labels=("near-miss",))
    print("\nparaphrases refused, by reason: " + ", ".join(f"{r} {n}" for r, n in refusals.most_common()))
    cold, warm = _guard_cost_us(pairs, stored, asked)
    print(f"guard cost per call: {cold:.0f} µs on prompts not seen before, {warm:.1f} µs on prompts seen before")
    if crossencoder is not None:
        costs = _crossenc_cost_ms(crossencoder, stored, asked)
        print(
            "cross-encoder cost per candidate (1 thread): "
            + ", ".join(f"{wall:.2f} ms wall ({cpu:.2f} ms CPU) {name}" for name, (wall, cpu) in costs.items())
        )
    if args.cross_validate:
        _cross_validate(pairs, rows)
    if args.show_errors:
        print("\n" + "\n".join(errors))


if __name__ == "__main__":
    main()
