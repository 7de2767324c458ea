"""What deciding prompt-cache checkpoints costs a Claude request on the hot path (routing/providers/prompt_cache.py).

The Anthropic adapter translates the request with `provider_cache` off and auto; the difference is the decision: the
client's marks looked for, the prefix's bytes summed, and, when they could reach the model's minimum, its tokens
counted until they do: the first time a prefix is seen, and again (its windows' counts remembered). Also the
byte-only check the worst case of a budgeted request makes. A figure, not a test.

    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken .venv/bin/python bench/provider_cache.py
"""

import os
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")

import django

django.setup()

from routing.providers.anthropic import messages_request  # noqa: E402
from routing.providers.prompt_cache import _window_tokens, may_write_cache, prompt_checkpoints  # noqa: E402

SENTENCE = "Refunds are issued within 14 days of a return being received at our warehouse. "
MODEL = "claude-sonnet-4-20250514"
REPEAT = 5


def body(system_sentences: int) -> dict:
    messages = [
        {"role": "system", "content": SENTENCE * system_sentences},
        {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": "It left the warehouse yesterday."},
        {"role": "user", "content": "And my refund?"},
    ]
    return {"model": MODEL, "messages": messages, "max_tokens": 200}


def per_call_us(function, number: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=REPEAT)) / number * 1e6


def main() -> None:
    for label, sentences in (
        ("short system prompt (~10 tokens)", 1),
        ("system prompt of ~1,900 tokens", 95),
        ("system prompt of ~50,000 tokens", 2_500),
    ):
        request = body(sentences)
        number = 2_000 if sentences < 1_000 else 200
        off = per_call_us(lambda request=request: messages_request(request, provider_cache="off"), number)
        auto = per_call_us(lambda request=request: messages_request(request, provider_cache="auto"), number)
        decide = per_call_us(lambda request=request: prompt_checkpoints(request, kind="anthropic"), number)

        def first_time(request=request):
            _window_tokens.cache_clear()
            prompt_checkpoints(request, kind="anthropic")

        first = per_call_us(first_time, number // 10)
        worst = per_call_us(
            lambda request=request: may_write_cache(
                request, kind="anthropic", upstream_name=MODEL, provider_cache="auto"
            ),
            number,
        )
        marks = prompt_checkpoints(request, kind="anthropic")
        print(
            f"{label:34} translate off {off:6.1f} µs, auto {auto:6.1f} µs; decision first time {first:7.1f} µs, "
            f"again {decide:6.1f} µs ({marks}); worst-case check {worst:6.1f} µs"
        )


if __name__ == "__main__":
    main()
