"""The most the parts of a prompt that are not text may bill: what a budget reserves and a token rate limit counts
for them.

The gateway counts text with tiktoken; an image or a file is billed by the provider in tokens the gateway cannot
count without fetching and decoding it. It need not: each provider bounds what one image may bill.
OpenAI scales an image to fit a 2048 px square and its shorter side to 768 px (never up), so `detail: "high"` is at
most 8 tiles of 512 px on top of a base (`detail: "low"` the base alone), or, for the models that count 32 px
patches, at most 1,536 patches times the model's multiplier. Anthropic scales an image down to at most 4,784 tokens
(the newer models' limit; the older ones' is about 1,600).
A file has no such bound (a PDF's pages), nor has an image for a model not listed here: for them the prompt is
bounded by the model's context window, as a provider refuses a longer prompt. (Audio input is refused at validation:
the catalog holds no audio token prices.)
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

from routing.catalog import ModelEntry

# An image at detail "high" is at most this many 512 px tiles, or for the models that count 32 px patches, patches.
OPENAI_TILES = 8
OPENAI_PATCHES = 1536


def _tiled(base: int, tile: int) -> tuple[int, int]:
    return base, base + OPENAI_TILES * tile


def _patched(multiplier: float) -> tuple[int, int]:
    bound = math.ceil(OPENAI_PATCHES * multiplier)
    return bound, bound


# Tokens one image may bill, as (detail "low", detail "high" or "auto"), by the model's name as OpenAI writes it: a
# name matches an entry it equals or continues with "-" (a snapshot's date, a variant: "gpt-4o-2024-08-06"), the
# longest entry winning, so "gpt-5.1" matches no entry here and is bounded by its context window. From OpenAI's vision
# guide ("Calculating costs") and Anthropic's ("Evaluate image size").
IMAGE_TOKENS_BY_PREFIX: dict[str, tuple[int, int]] = {
    "gpt-4o-mini": _tiled(2833, 5667),
    "gpt-4o": _tiled(85, 170),
    "chatgpt-4o": _tiled(85, 170),
    "gpt-4-turbo": _tiled(85, 170),
    "gpt-4-vision": _tiled(85, 170),
    "gpt-4.5": _tiled(85, 170),
    "gpt-4.1": _tiled(85, 170),
    "gpt-4.1-mini": _patched(1.62),
    "gpt-4.1-nano": _patched(2.46),
    "gpt-5": _tiled(70, 140),
    "gpt-5-mini": _patched(1.62),
    "gpt-5-nano": _patched(2.46),
    "o1": _tiled(75, 150),
    "o3": _tiled(75, 150),
    "o4-mini": _patched(1.72),
    "computer-use-preview": _tiled(65, 129),
}
# Any Claude, by Anthropic's name or Bedrock's ("anthropic.claude-…", "us.anthropic.claude-…", an ARN).
CLAUDE_IMAGE_TOKENS = 4784
FINE_TUNE_PREFIX = "ft:"


def _entry_for(name: str) -> tuple[int, int] | None:
    matches = [entry for entry in IMAGE_TOKENS_BY_PREFIX if name == entry or name.startswith(f"{entry}-")]
    return IMAGE_TOKENS_BY_PREFIX[max(matches, key=len)] if matches else None


def image_tokens(upstream_name: str, *, low_detail: bool) -> int | None:
    """The most one image may bill sent to the model of that upstream name; None when the model is not known. A
    router's "vendor/model" name and a fine-tune's "ft:model:…" are read as the model's."""
    name = upstream_name.lower()
    if "claude" in name:
        return CLAUDE_IMAGE_TOKENS
    name = name.rsplit("/", 1)[-1].removeprefix(FINE_TUNE_PREFIX).split(":", 1)[0]
    entry = _entry_for(name)
    if entry is None:
        return None
    low, high = entry
    return low if low_detail else high


@dataclass(frozen=True, slots=True)
class PromptMedia:
    """The parts of a chat prompt that are not text, as far as what they may bill goes."""

    low_detail_images: int = 0
    # At detail "high" or "auto".
    high_detail_images: int = 0
    # Nothing bounds a file short of the context window.
    files: int = 0

    @classmethod
    def of(cls, messages: Iterable[dict]) -> "PromptMedia":
        low = high = files = 0
        for message in messages:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image_url":
                    image = part.get("image_url")
                    if isinstance(image, dict) and image.get("detail") == "low":
                        low += 1
                    else:
                        high += 1
                elif kind == "file":
                    files += 1
        return cls(low, high, files)

    def __bool__(self) -> bool:
        return bool(self.low_detail_images or self.high_detail_images or self.files)

    def prompt_tokens(self, model: ModelEntry, text_tokens: int) -> int:
        """The most the prompt may bill sent to ``model``: ``text_tokens`` (its text as counted) and these parts."""
        if not self:
            return text_tokens
        window = max(text_tokens, model.context_window)
        if self.files:
            return window
        low = image_tokens(model.upstream_name, low_detail=True)
        high = image_tokens(model.upstream_name, low_detail=False)
        if low is None or high is None:
            return window
        return min(text_tokens + self.low_detail_images * low + self.high_detail_images * high, window)


NO_MEDIA = PromptMedia()
