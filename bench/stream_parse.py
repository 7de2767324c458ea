"""Time the provider adapters take to read a streamed answer, per event: ``OpenAIStream.events()`` and
``AnthropicStream.events()`` over an in-memory response that arrives one event per read, as the mock upstream sends
it. No network and no transport: the figure is the SSE parsing plus the adapter's own work on each event.
Figures, not a test.

    .venv/bin/python bench/stream_parse.py --events 64 --streams 500 --repeats 7
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import django
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
django.setup()

from routing.catalog import ProviderEntry  # noqa: E402
from routing.providers import anthropic, openai  # noqa: E402

WORD = " tokens"


class Reads(httpx.AsyncByteStream):
    def __init__(self, reads: list[bytes]):
        self.reads = reads

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for read in self.reads:
            yield read


def openai_reads(events: int) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "mock-small"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": WORD}, "finish_reason": None}]}] * events
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": events}})
    return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]


def anthropic_reads(events: int) -> list[bytes]:
    message = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude", "content": []}
    usage = {"input_tokens": 9, "output_tokens": 1}
    kinds = [("message_start", {"message": {**message, "usage": usage}})]
    kinds.append(("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
    kinds += [("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": WORD}})] * events
    kinds.append(("content_block_stop", {"index": 0}))
    kinds.append(("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": events}}))
    kinds.append(("message_stop", {}))
    return [f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data}) + b"\n\n" for kind, data in kinds]


def response(reads: list[bytes]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Reads(reads))


async def read_openai(provider: ProviderEntry, reads: list[bytes]) -> int:
    stream = openai.OpenAIStream(provider, response(reads), time.perf_counter())
    return sum([1 async for _ in stream.events()])


async def read_anthropic(provider: ProviderEntry, reads: list[bytes]) -> int:
    body = {"model": "claude", "stream_options": {"include_usage": True}}
    stream = anthropic.AnthropicStream(provider, response(reads), time.perf_counter(), body)
    await stream.open()
    return sum([1 async for _ in stream.events()])


async def measure(read, provider: ProviderEntry, reads: list[bytes], *, streams: int, repeats: int) -> list[float]:
    """Microseconds per upstream event, once per repeat."""
    per_event = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(streams):
            await read(provider, reads)
        per_event.append((time.perf_counter() - started) / (streams * len(reads)) * 1e6)
    return per_event


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=64, help="content events per streamed answer")
    parser.add_argument("--streams", type=int, default=500, help="answers read per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cases = [
        ("openai", read_openai, openai_reads(args.events)),
        ("anthropic", read_anthropic, anthropic_reads(args.events)),
    ]
    print(f"{args.streams} answers of {args.events} content events per repeat, {args.repeats} repeats; us per event")
    for kind, read, reads in cases:
        provider = ProviderEntry(
            name=f"bench-{kind}", kind=kind, base_url="http://bench.invalid", api_key="", timeout_seconds=5
        )
        per_event = await measure(read, provider, reads, streams=args.streams, repeats=args.repeats)
        median, low, high = statistics.median(per_event), min(per_event), max(per_event)
        print(f"{kind:<10} median {median:6.2f}  min {low:6.2f}  max {high:6.2f}")


if __name__ == "__main__":
    asyncio.run(main())
