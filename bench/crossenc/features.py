"""MiniLM similarity and near-miss guard verdict for every pair of a file, saved to an npz (read by cv_report.py and
cost.py, so they are computed once).

    .venv/bin/python bench/crossenc/features.py bench/cache_pairs.jsonl var/crossenc/feats_tuning.npz
"""

import sys
import time
from pathlib import Path

import numpy as np
from common import guard_ok, load_pairs, similarities

src, dst = sys.argv[1], sys.argv[2]
pairs = load_pairs(src)
t = time.time()
sim = similarities(pairs)
print(f"similarity {time.time() - t:.1f}s")
t = time.time()
ok = guard_ok(pairs)
print(f"guard {time.time() - t:.1f}s")
Path(dst).parent.mkdir(parents=True, exist_ok=True)
np.savez(dst, sim=sim, guard_ok=ok)
