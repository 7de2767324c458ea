"""The transcript compression's summary call reads: the dropped turns' text, their calls written out, their
attachments named rather than pasted."""

from decimal import Decimal

from llmops.gateway.chat.summaries import _summary_body
from routing.catalog import ModelEntry, ModelPrices, ProviderEntry

PROVIDER = ProviderEntry(name="p", kind="openai", base_url="http://127.0.0.1:9", api_key="", timeout_seconds=1)
SUMMARIZER = ModelEntry(
    name="small",
    upstream_name="gpt-4o-mini",
    provider=PROVIDER,
    prices=ModelPrices(Decimal("0.15"), Decimal("0.075"), Decimal("0.60")),
    context_window=128_000,
)
IMAGE_DATA = "iVBORw0KGgo" + "A" * 20_000


def transcript(messages: list[dict]) -> str:
    return _summary_body(SUMMARIZER, messages)["messages"][-1]["content"]


def test_images_are_named_and_calls_written_out():
    dropped = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is on this receipt?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE_DATA}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"order": "A-17"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "refunded on 3 May"}]},
        {"role": "assistant", "content": None, "function_call": {"name": "notify", "arguments": '{"to": "ana"}'}},
    ]

    assert transcript(dropped) == (
        "user: What is on this receipt? [image]\n"
        'assistant: [called lookup with {"order": "A-17"}]\n'
        "tool: refunded on 3 May\n"
        'assistant: [called notify with {"to": "ana"}]'
    )
