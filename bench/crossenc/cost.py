"""What the installed cross-encoder (var/crossenc, int8 ONNX) costs a gateway worker, on one thread as a worker runs it:

- time: ms per candidate, scored alone and five in one run (wall and CPU of the scoring thread);
- a lookup: CPU ms of the gateway's decision (`candidate_accepted`) on a lookup whose 1, 2 or 5 candidates all pass
  the guard, when the most similar is accepted and when all are refused (candidates are scored one at a time until
  one is accepted);
- batching: int8 quantises activations per run, so a pair's score moves a little with its run-mates: on the tuning
  pairs, the largest move between scored alone and in runs of five, and the decisions it flips at the threshold;
- load: a gateway worker's process (llmops.asgi imported, the embedder loaded) with and without the cross-encoder
  loaded on first use: how long that load takes, and the RSS (as bench/embedder_cost.py measures a process).

    .venv/bin/python bench/crossenc/cost.py
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from common import ROOT, tuning_pairs
from django.conf import settings

from routing.cache.crossencoder import candidate_accepted, configured_crossencoder
from routing.cache.index import Candidate, IndexedEntry
from routing.cache.near_miss import near_miss_reason

LOAD = """
import json, sys, time
import llmops.asgi
from routing.cache.embedders import configured_embedder
from routing.cache.crossencoder import configured_crossencoder
configured_embedder().embed(["How do I reset my password?"])
loaded = time.perf_counter()
if sys.argv[1] == "on":
    configured_crossencoder().score([("how do i reset my password", "steps to reset my password")])
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024
print(json.dumps({"seconds": time.perf_counter() - loaded, "rss_mb": rss, "torch": "torch" in sys.modules}))
"""


def timing(model, pairs) -> None:
    sample = [(pair.stored, pair.asked) for pair in pairs[::11]][:200]
    runs = {"alone": [[pair] for pair in sample], "5 in a run": [sample[i : i + 5] for i in range(0, 200, 5)]}
    print("ms per candidate, one thread, median of 5 rounds over 200 candidates: wall (CPU)")
    for name, batches in runs.items():
        for batch in batches[:10]:
            model.score(batch)
        walls, cpus = [], []
        for _ in range(5):
            wall, cpu = time.perf_counter(), time.thread_time()
            for batch in batches:
                model.score(batch)
            walls.append((time.perf_counter() - wall) / len(sample) * 1000)
            cpus.append((time.thread_time() - cpu) / len(sample) * 1000)
        print(f"  {name:<12}{statistics.median(walls):8.2f} ({statistics.median(cpus):.2f})")


def lookups(model, pairs) -> None:
    """The gateway's decision on lookups whose candidates all pass the guard: tuning paraphrases the model accepts
    (the most similar candidate wins), and tuning pairs of any label it refuses (every candidate is scored). Each
    lookup's candidates are its stored prompt under as many keys, most similar first."""
    threshold = settings.LLMOPS_CACHE_CROSSENC_THRESHOLD
    guarded = [pair for pair in pairs if near_miss_reason(pair.asked, pair.stored) is None]
    scored = [(pair.label, pair.stored, pair.asked, model.score([(pair.stored, pair.asked)])[0]) for pair in guarded]
    lookups = {
        "accepted": [(s, a) for label, s, a, score in scored if label == "paraphrase" and score >= threshold][:100],
        "all refused": [(s, a) for _, s, a, score in scored if score < threshold][:100],
    }
    print("CPU ms of a lookup's decision whose candidates all pass the guard, median of 5 rounds")
    for name, asked_pairs in lookups.items():
        figures = []
        for count in (1, 2, 5):
            cpus = []
            for _ in range(5):
                cpu = time.thread_time()
                for stored, asked in asked_pairs:
                    candidates = [
                        Candidate(IndexedEntry(f"{index}", stored, "context", 0.0), 0.9 - index / 100)
                        for index in range(count)
                    ]
                    candidate_accepted(asked, candidates, model=model)
                cpus.append((time.thread_time() - cpu) / len(asked_pairs) * 1000)
            figures.append(f"{count}: {statistics.median(cpus):.2f}")
        print(f"  {name:<12} ({len(asked_pairs)} lookups) by candidates: " + ", ".join(figures))


def batching(model, pairs) -> None:
    texts = [(pair.stored, pair.asked) for pair in pairs]
    alone = np.array([model.score([pair])[0] for pair in texts])
    runs = np.concatenate([model.score(texts[i : i + 5]) for i in range(0, len(texts), 5)])
    threshold = settings.LLMOPS_CACHE_CROSSENC_THRESHOLD
    flips = int(((alone >= threshold) != (runs >= threshold)).sum())
    print(
        f"scores alone vs in runs of 5 on {len(texts)} tuning pairs: max |diff| {np.abs(alone - runs).max():.4f}, "
        f"mean {np.abs(alone - runs).mean():.4f}; {flips} land on the other side of {threshold:.4f}"
    )


def load_cost() -> None:
    """A gateway worker's process (llmops.asgi imported, the embedder loaded and run once), then the cross-encoder
    loaded on first use and run once: seconds for that load, and the process's RSS."""
    print("a worker process (llmops.asgi, the embedder loaded), then the cross-encoder loaded and run once")
    for crossenc in ("off", "on"):
        output = subprocess.run(
            [sys.executable, "-c", LOAD, crossenc],
            cwd=ROOT,
            env={**os.environ, "LLMOPS_CACHE_CROSSENC": crossenc},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        report = json.loads(output.strip().splitlines()[-1])
        print(
            f"  cross-encoder {crossenc:<4} load {report['seconds']:5.2f} s  RSS {report['rss_mb']:4.0f} MB  "
            f"torch imported: {report['torch']}"
        )


def main() -> None:
    model = configured_crossencoder()
    if model is None:
        raise SystemExit("the cross-encoder is not installed: `manage.py crossenc_train`")
    pairs = tuning_pairs()
    timing(model, pairs)
    lookups(model, pairs)
    batching(model, pairs)
    load_cost()


if __name__ == "__main__":
    main()
