"""CPU of the near-miss guard's parse of a prompt it has not seen (`prompt_details`, its own cache bypassed), on the
tuning pairs' prompts and on prompts like the gateway bench's ("Summarise support ticket N about a late refund"),
with the lemma cache on and off (docs/performance.md, "The guard's parse: one search for any phrase"). Rounds
alternate the two. Figures, not a test.

    .venv/bin/python bench/guard_parse.py [--rounds 2]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
django.setup()

from django.conf import settings  # noqa: E402

from routing.cache import near_miss  # noqa: E402
from routing.cache.crossenc_train import training_pairs_load  # noqa: E402


def _tuning_prompts() -> list[str]:
    pairs = training_pairs_load(settings.LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS)
    return sorted({prompt for pair in pairs for prompt in (pair.stored, pair.asked)})


def _us_a_prompt(prompts: list[str]) -> float:
    started = time.process_time()
    for prompt in prompts:
        near_miss.prompt_details.__wrapped__(prompt)
    return (time.process_time() - started) / len(prompts) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sets = {
        "tuning prompts": _tuning_prompts(),
        "ticket prompts": [
            f"summarise support ticket 1a2b3c4d-{t}-{i} about a late refund" for t in (0, 1) for i in range(2000)
        ],
    }
    cached_lemma = near_miss._lemma
    uncached = getattr(cached_lemma, "__wrapped__", None)
    # A checkout from before the lemma cache (2ed1d85, the "before" of docs/performance.md) has one variant only.
    lemmas = (
        {"lemma cached": cached_lemma, "lemma not cached": uncached} if uncached else {"no lemma cache": cached_lemma}
    )
    print(", ".join(f"{name}: {len(prompts)}" for name, prompts in sets.items()) + "; µs of CPU a prompt")
    for _ in range(args.rounds):
        for label, lemma in lemmas.items():
            near_miss._lemma = lemma
            print(f"{label:<18}" + "   ".join(f"{name} {_us_a_prompt(prompts):6.1f}" for name, prompts in sets.items()))
    near_miss._lemma = cached_lemma


if __name__ == "__main__":
    main()
