"""What the hot path pays to learn whether a price version took effect since its configuration was loaded.

Every request asks the shared configuration slice whether it is stale (llmops/gateway/snapshot.py): an attribute
check when no price version is upcoming, a clock read and a comparison when one is. A figure, not a test.

    .venv/bin/python bench/price_staleness.py
"""

import os
import sys
import timeit
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")

import django

django.setup()

from django.utils import timezone  # noqa: E402

from llmops.gateway.snapshot import SharedSlice  # noqa: E402

CALLS = 1_000_000


def main() -> None:
    empty = min(timeit.repeat(lambda: None, number=CALLS, repeat=5))
    for label, upcoming in (("no upcoming price", None), ("an upcoming price", timezone.now() + timedelta(days=1))):
        shared = SharedSlice(version="bench", models_by_id={}, prices_change_at=upcoming)
        best = min(timeit.repeat(shared.is_stale, number=CALLS, repeat=5))
        print(f"staleness check per request, {label}: {(best - empty) / CALLS * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
