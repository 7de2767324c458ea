"""What deciding prompt-cache checkpoints costs a Claude request on the hot path (routing/providers/prompt_cache.py).

The Anthropic adapter translates the request with no checkpoint and with the gateway's; the difference is the
decision: the client's marks looked for, the prefix's bytes summed and, only when they do not decide, at most 8
characters per token of the model's minimum counted. Nothing is remembered between requests, so every figure is what
each request pays. The worst cases: a megabyte of spaces (decided by its bytes alone), and a prefix just short of the
minimum whose bytes cannot tell (letters tiktoken makes a token of 8: the whole counting budget is spent; for a model
whose minimum is 4,096 tokens the adapter runs that count on the CPU pool, core.cpu). Also the byte-only check the
worst case of a budgeted request makes. A figure, not a test.

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

from routing.providers import prompt_cache  # noqa: E402
from routing.providers.anthropic import messages_request  # noqa: E402

SENTENCE = "Refunds are issued within 14 days of a return being received at our warehouse. "
SONNET = "claude-sonnet-4-20250514"
OPUS_4_5 = "claude-opus-4-5-20251101"
REPEAT = 5


def body(system: str, model: str = SONNET) -> dict:
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": "It left the warehouse yesterday."},
        {"role": "user", "content": "And my refund?"},
    ]
    return {"model": model, "messages": messages, "max_tokens": 200}


def per_call_us(function, number: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=REPEAT)) / number * 1e6


def main() -> None:
    cases = (
        ("short system prompt (~10 tokens)", body(SENTENCE), 2_000),
        ("system prompt of ~1,900 tokens", body(SENTENCE * 95), 2_000),
        ("system prompt of ~50,000 tokens", body(SENTENCE * 2_500), 200),
        ("1,000,000 spaces", body(" " * 1_000_000), 50),
        ("8,000 letters (Sonnet, 1,000 tokens)", body("a" * 8_000), 50),
        ("32,000 letters (Opus 4.5, 4,000 tokens)", body("a" * 32_000, OPUS_4_5), 20),
    )
    for label, request, number in cases:
        off = per_call_us(lambda request=request: messages_request(request), number)
        decide = per_call_us(lambda request=request: prompt_cache.prompt_checkpoints(request, kind="anthropic"), number)
        worst = per_call_us(
            lambda request=request: prompt_cache.may_write_cache(
                request, kind="anthropic", upstream_name=request["model"], provider_cache="auto"
            ),
            number,
        )
        marks = prompt_cache.prompt_checkpoints(request, kind="anthropic")
        print(
            f"{label:40} translate {off:8.1f} µs; decision {decide:9.1f} µs ({marks}); worst-case check {worst:7.1f} µs"
        )


if __name__ == "__main__":
    main()
