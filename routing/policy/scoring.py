"""A transparent difficulty score (0-100) for aliases such as `auto`: each feature adds points an admin can read."""

import re
from dataclasses import dataclass

# Points per feature; their sum is capped at 100.
LENGTH_POINTS_MAX = 30
TOKENS_PER_LENGTH_POINT = 100
CODE_POINTS = 20
MATH_POINTS = 15
MULTI_STEP_POINTS = 15
TOOLS_POINTS = 15
OUTPUT_POINTS_MAX = 15
OUTPUT_TOKENS_PER_POINT = 200

CODE_PATTERN = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction\s*\w*\(|\bimport \w+|#include\b|=>|\bSELECT\b.+\bFROM\b|[;{]\s*$",
    re.IGNORECASE | re.MULTILINE,
)
MATH_PATTERN = re.compile(
    r"\\(frac|sum|int|sqrt)|\b(prove|proof|integral|derivative|equation|theorem|matrix|probability)\b"
    r"|\d+\s*[-+*/^]\s*\d+\s*[=<>]|[∑∫√≤≥]",
    re.IGNORECASE,
)
MULTI_STEP_PATTERN = re.compile(
    r"\bstep[- ]by[- ]step\b|\bfirst\b.+\bthen\b|\bafter that\b|\bfinally\b", re.IGNORECASE | re.DOTALL
)
NUMBERED_LINE = re.compile(r"^\s*(\d+[.)]|[-*•])\s+\S", re.MULTILINE)
NUMBERED_LINES_FOR_MULTI_STEP = 3
# The features are looked for in the first and the last SCAN_CHARS / 2 characters of the message. A regex search holds
# the GIL to its end, and over a multi-megabyte message these took seconds of the worker's event loop; the length
# points still count the whole prompt.
SCAN_CHARS = 16_384


@dataclass(frozen=True, slots=True)
class DifficultyScore:
    total: int
    points: dict[str, int]

    def describe(self) -> str:
        parts = [f"{feature}+{points}" for feature, points in self.points.items() if points]
        return ",".join(parts) or "no-features"


def _scanned_parts(text: str) -> tuple[str, ...]:
    if len(text) <= SCAN_CHARS:
        return (text,)
    return text[: SCAN_CHARS // 2], text[-(SCAN_CHARS // 2) :]


def difficulty_score(
    *, prompt_tokens: int, last_user_message: str, has_tools: bool, requested_max_tokens: int | None
) -> DifficultyScore:
    parts = _scanned_parts(last_user_message)

    def found(pattern: re.Pattern) -> bool:
        return any(pattern.search(part) for part in parts)

    multi_step = found(MULTI_STEP_PATTERN) or (
        sum(len(NUMBERED_LINE.findall(part)) for part in parts) >= NUMBERED_LINES_FOR_MULTI_STEP
    )
    points = {
        "length": min(LENGTH_POINTS_MAX, prompt_tokens // TOKENS_PER_LENGTH_POINT),
        "code": CODE_POINTS if found(CODE_PATTERN) else 0,
        "math": MATH_POINTS if found(MATH_PATTERN) else 0,
        "multi_step": MULTI_STEP_POINTS if multi_step else 0,
        "tools": TOOLS_POINTS if has_tools else 0,
        "output": min(OUTPUT_POINTS_MAX, (requested_max_tokens or 0) // OUTPUT_TOKENS_PER_POINT),
    }
    return DifficultyScore(total=min(100, sum(points.values())), points=points)
