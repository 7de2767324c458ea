"""What the parts of a prompt that are not text may bill: the bound each image is reserved at, by model, and the
context window where nothing smaller bounds a part."""

from decimal import Decimal

import pytest

from llmops.gateway.chat.worst_case import OutputBound, chain_worst_case, fitting_max_tokens
from routing.catalog import ModelEntry, ModelPrices, ProviderEntry
from routing.media import NO_MEDIA, PromptMedia, image_tokens

PROVIDER = ProviderEntry(name="p", kind="openai", base_url="http://127.0.0.1:9", api_key="", timeout_seconds=1)
PRICES = ModelPrices(Decimal("2.50"), Decimal("1.25"), Decimal("10.00"))
WINDOW = 128_000


def model(upstream_name: str) -> ModelEntry:
    return ModelEntry(name=upstream_name, upstream_name=upstream_name, provider=PROVIDER, prices=PRICES,
                      context_window=WINDOW)  # fmt: skip


def image(detail: str | None = None) -> dict:
    url = {"url": "https://example.com/cat.png"} | ({"detail": detail} if detail else {})
    return {"type": "image_url", "image_url": url}


def user(*parts: dict) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": "What is this?"}, *parts]}


@pytest.mark.parametrize(
    ("upstream_name", "low", "high"),
    [
        ("gpt-4o", 85, 85 + 8 * 170),
        ("gpt-4o-2024-08-06", 85, 1445),
        ("gpt-4o-mini", 2833, 2833 + 8 * 5667),
        ("gpt-4o-mini-2024-07-18", 2833, 48_169),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", 2833, 48_169),
        ("gpt-4.1", 85, 1445),
        ("gpt-4.1-mini", 2489, 2489),
        ("gpt-4.1-nano-2025-04-14", 3779, 3779),
        ("gpt-5", 70, 70 + 8 * 140),
        ("gpt-5-mini", 2489, 2489),
        ("o3", 75, 75 + 8 * 150),
        ("o4-mini", 2642, 2642),
        ("GPT-4o", 85, 1445),
        ("openai/gpt-4o-mini", 2833, 48_169),
        ("gpt-5-2025-08-07", 70, 1190),
        ("gpt-5-chat-latest", 70, 1190),
        ("gpt-5-mini-2025-08-07", 2489, 2489),
        ("claude-sonnet-4-5", 4784, 4784),
        ("claude-opus-4-7", 4784, 4784),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", 4784, 4784),
        ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", 4784, 4784),
    ],
)
def test_each_known_model_bounds_an_image_by_its_providers_rule(upstream_name, low, high):
    assert image_tokens(upstream_name, low_detail=True) == low
    assert image_tokens(upstream_name, low_detail=False) == high


@pytest.mark.parametrize(
    "upstream_name",
    # A later model of a family is not assumed to bill as the documented one: gpt-5.1 is not gpt-5.
    ["mock-small", "my-azure-deployment", "llama-3-70b", "mistral-large", "gpt-5.1", "gpt-5.4-mini", "gpt-4o2"],
)
def test_a_model_not_known_bounds_no_image(upstream_name):
    assert image_tokens(upstream_name, low_detail=False) is None


def test_parts_are_counted_by_kind_and_detail():
    messages = [
        {"role": "system", "content": "Be brief."},
        user(image("low"), image("high"), image("auto"), image()),
        user({"type": "file", "file": {"file_id": "file-1"}}, {"type": "file", "file": {"file_data": "JVBERi0="}}),
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ]

    assert PromptMedia.of(messages) == PromptMedia(low_detail_images=1, high_detail_images=3, files=2)
    assert PromptMedia.of([user()]) == NO_MEDIA and not NO_MEDIA


def test_images_add_their_bound_to_the_text_up_to_the_context_window():
    two = PromptMedia.of([user(image("low"), image())])

    assert two.prompt_tokens(model("gpt-4o"), 100) == 100 + 85 + 1445
    assert two.prompt_tokens(model("gpt-4o-mini"), 100) == 100 + 2833 + 48_169
    many = PromptMedia(high_detail_images=10)
    assert many.prompt_tokens(model("gpt-4o-mini"), 100) == WINDOW
    assert NO_MEDIA.prompt_tokens(model("gpt-4o-mini"), 100) == 100


def test_files_and_images_for_an_unknown_model_are_bounded_by_the_context_window():
    pdf = PromptMedia(files=1)

    assert pdf.prompt_tokens(model("gpt-4o"), 100) == WINDOW
    assert PromptMedia(high_detail_images=1).prompt_tokens(model("mock-small"), 100) == WINDOW
    # A text already over the window is counted as it is: the provider refuses it, and the bound never drops below.
    assert pdf.prompt_tokens(model("gpt-4o"), WINDOW + 5) == WINDOW + 5


def test_the_worst_case_and_the_max_tokens_that_fits_count_the_images_of_each_model_of_the_chain():
    chain = [model("gpt-4o"), model("gpt-4o-mini")]
    media = PromptMedia(high_detail_images=1)
    bound = OutputBound(max_tokens=100)

    worst = chain_worst_case(chain, prompt_tokens=50, bound=bound, fallback=4096, media=media)
    text_only = chain_worst_case(chain, prompt_tokens=50, bound=bound, fallback=4096)

    # The same prices: the model whose image bills the most tokens is the dearest.
    assert worst == chain_worst_case([chain[1]], prompt_tokens=50 + 48_169, bound=bound, fallback=4096)
    assert text_only < worst
    fitting = fitting_max_tokens(chain, prompt_tokens=50, bound=bound, fallback=4096, available=worst, media=media)
    assert fitting == 99
    assert (
        fitting_max_tokens(chain, prompt_tokens=50, bound=bound, fallback=4096, available=text_only, media=media)
        is None
    )
