"""Train the final cross-encoder on all pairs with RECIPE; save it with the chosen rule and the cross-validated
thresholds (var/crossenc/cv_thresholds.json, waited for) to var/crossenc/final/ (encoder/, head.pt, config.json).

    CROSSENC_THREADS=1 .venv/bin/python bench/crossenc/final.py bench/cache_pairs.jsonl c2
"""

import json
import os
import sys
import time

import torch
from common import OUT, RECIPE, ROOT, SIM_GATE, SIM_TODAY, load_pairs, train
from rules import RULES
from score import FINAL

pairs = load_pairs(sys.argv[1])
chosen_rule = sys.argv[2] if len(sys.argv) > 2 else "c2"
model, tok, secs = train(pairs, RECIPE, log=lambda m: print(m, flush=True))
cv_thresholds = OUT / "cv_thresholds.json"
while not cv_thresholds.exists():  # written by cv_report.py once every fold is scored
    time.sleep(10)
with open(cv_thresholds) as f:
    thresholds = json.load(f)["thresholds"]
encoder = FINAL / "encoder"
encoder.mkdir(parents=True, exist_ok=True)
model.bert.save_pretrained(encoder)
tok.save_pretrained(encoder)
torch.save(model.head.state_dict(), FINAL / "head.pt")
config = {
    "chosen_rule": chosen_rule,
    "chosen_rule_text": RULES[chosen_rule],
    "thresholds": {
        "sim_today": SIM_TODAY,
        "sim_gate": SIM_GATE,
        "t_b": thresholds["b"],
        "t_c": thresholds["c"],
        "t_d": thresholds["d"],
        "t_c2": thresholds["c2"],
    },
    "threshold_choice": (
        "t_b, t_c, t_d: lowest cross-encoder threshold with <= 0.5% near-misses and 0 unrelated served (within"
        " the rule's sim/guard gate); t_c2: lowest threshold with <= 1% near-misses served by sim>=0.65 AND CE"
        " alone (guard off). All chosen on the pooled out-of-fold scores (4 folds x 2 domains) of the tuning set."
    ),
    "rules": RULES,
    "recipe": RECIPE,
    "input": "normalize_prompt(stored) [SEP] normalize_prompt(asked)",
    "output": "sigmoid(linear(mean-pooled last hidden state))",
    "trained_on": os.path.relpath(os.path.abspath(sys.argv[1]), ROOT),
    "n_pairs": len(pairs),
    "train_seconds": round(secs, 1),
    "torch": torch.__version__,
    "train_threads": torch.get_num_threads(),
}
with open(FINAL / "config.json", "w") as out:
    json.dump(config, out, indent=1)
print(f"final model trained in {secs:.0f}s -> {FINAL.relative_to(ROOT)}/")
