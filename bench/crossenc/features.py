"""MiniLM similarity (the gateway's embedder, LLMOPS_CACHE_EMBEDDER: ONNX int8 by default) and the near-miss guard's
verdict for every tuning pair, saved to var/crossenc/bench/features.npz (read by cv_report.py).

    .venv/bin/python bench/crossenc/features.py
"""

import time

import numpy as np
from common import OUT, tuning_pairs

from routing.cache.embedders import configured_embedder
from routing.cache.near_miss import near_miss_reason

pairs = tuning_pairs()
started = time.monotonic()
embedder = configured_embedder()
stored = embedder.embed([pair.stored for pair in pairs])
asked = embedder.embed([pair.asked for pair in pairs])
sim = np.sum(stored * asked, axis=1)
guard_ok = np.array([near_miss_reason(pair.asked, pair.stored) is None for pair in pairs])
OUT.mkdir(parents=True, exist_ok=True)
np.savez(OUT / "features.npz", sim=sim, guard_ok=guard_ok)
print(f"{len(pairs)} pairs: similarity and guard in {time.monotonic() - started:.0f} s -> {OUT / 'features.npz'}")
