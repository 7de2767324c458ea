"""Score a labelled pairs file (same schema as bench/cache_pairs.jsonl) with rules (a)-(d) and (c2) at the
thresholds fixed in var/crossenc/final/config.json (written by final.py). Prints served counts by label and
near-misses served by kind.

    .venv/bin/python bench/crossenc/score.py --pairs FILE [--json]
"""

import argparse
import json
import time
from collections import Counter

import torch
from common import LABELS, OUT, THREADS, CrossEncoder, guard_ok, load_pairs, score, similarities
from rules import RULES, serve

FINAL = OUT / "final"


def load_final(folder=FINAL):
    from transformers import AutoTokenizer

    with open(folder / "config.json") as f:
        cfg = json.load(f)
    model = CrossEncoder(str(folder / "encoder"))
    model.head.load_state_dict(torch.load(folder / "head.pt"))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder / "encoder")), cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--json", action="store_true", help="also print one JSON object with all counts")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    pairs = load_pairs(args.pairs)
    model, tok, cfg = load_final()
    th = cfg["thresholds"]
    sim = similarities(pairs)
    ok = guard_ok(pairs)
    t0 = time.time()
    ce = score(model, tok, pairs, cfg["recipe"]["max_len"])
    ce_secs = time.time() - t0
    served = serve(sim, ok, ce, {"b": th["t_b"], "c": th["t_c"], "d": th["t_d"], "c2": th["t_c2"]})
    labels = [p["label"] for p in pairs]
    kinds = [p["kind"] for p in pairs]
    totals = Counter(labels)
    kind_tot = Counter(k for k, lab in zip(kinds, labels, strict=True) if lab == "near-miss")
    result = {}
    print(f"{args.pairs}: {len(pairs)} pairs " + ", ".join(f"{lab} {totals[lab]}" for lab in LABELS))
    print(
        f"thresholds: sim_today {th['sim_today']}, sim_gate {th['sim_gate']}, t_b {th['t_b']:.4f}, "
        f"t_c {th['t_c']:.4f}, t_d {th['t_d']:.4f}, t_c2 {th['t_c2']:.4f}; chosen rule ({cfg['chosen_rule']})"
    )
    print(f"cross-encoder scoring: {1000 * ce_secs / max(1, len(pairs)):.2f} ms/pair (batched, {THREADS} threads)")
    for r, desc in RULES.items():
        s = served[r]
        by_label = Counter(lab for lab, x in zip(labels, s, strict=True) if x)
        by_kind = Counter(k for k, lab, x in zip(kinds, labels, s, strict=True) if x and lab == "near-miss")
        mark = "  <- chosen" if r == cfg["chosen_rule"] else ""
        print(f"\n({r}) {desc}{mark}")
        for lab in LABELS:
            n = totals[lab]
            print(f"  {lab:<11} served {by_label[lab]:>4}/{n:<4} ({100 * by_label[lab] / n if n else 0:5.1f}%)")
        print("  near-miss served by kind: " + ", ".join(f"{k} {by_kind[k]}/{kind_tot[k]}" for k in sorted(kind_tot)))
        result[r] = {
            "served": {lab: by_label[lab] for lab in LABELS},
            "total": {lab: totals[lab] for lab in LABELS},
            "near_miss_served_by_kind": {k: by_kind[k] for k in sorted(kind_tot)},
            "near_miss_total_by_kind": dict(sorted(kind_tot.items())),
        }
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
