"""Provider prompt caching as a cost lever: the checkpoints the gateway puts on the stable prefix of a request to a
Claude model, on Anthropic's API or on Bedrock.

Their prompt cache is read from the start of a request: the tools, then the system prompt, then the turns. A
checkpoint ends a prefix the provider writes to its cache (at the cache-write price, 1.25x the input price) and reads
back, at a tenth of the input price, for any later request that starts with exactly the same prefix within five
minutes. So where a routing rule leaves ``provider_cache`` on ``auto``, the adapters mark where the stable part of a
request ends: after the tools, after the system prompt, and after the turns before the last one (the history of a
conversation, which its next turn repeats). A checkpoint is set only where the prefix up to it is long enough for the
provider to cache at all, and none at all when the client marked the request itself (``cache_control`` on a content
part or a tool): its own checkpoints stand as it sent them.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import orjson

from routing.tokens import count_text_tokens

AUTO = "auto"
OFF = "off"
PROVIDER_CACHE_MODES = (AUTO, OFF)
# Anthropic's prices of its 5-minute cache, as multiples of the input price: the defaults of a Claude model's cache
# prices when a price file or the admin leaves them blank (routing.prices.cache_price_defaults).
CACHE_WRITE_MULTIPLIER = Decimal("1.25")
CACHE_READ_MULTIPLIER = Decimal("0.1")
# Anthropic takes at most this many checkpoints in a request; the gateway sets at most three.
MAX_CHECKPOINTS = 4
# The fewest tokens a prefix must hold to be cached, by model (Anthropic's documented minimum cacheable prompt length;
# Bedrock's is the same for the same model). The first pattern the model's name contains decides.
MINIMUM_CACHEABLE_TOKENS = (
    ("opus-4-5", 4096),
    ("opus-4-6", 4096),
    ("haiku-4", 4096),
    ("sonnet-4-6", 2048),
    ("haiku", 2048),
)
DEFAULT_MINIMUM_CACHEABLE_TOKENS = 1024
# Counting stops once the prefix is known to be long enough, reading at most this many characters per token still
# needed at a time: English runs about four to a token.
CHARS_PER_TOKEN_WINDOW = 8
# Windows whose count is remembered, each at most CHARS_PER_TOKEN_WINDOW x 4,096 characters: a few MB a process.
COUNTED_WINDOWS = 256
SYSTEM_ROLES = ("system", "developer")


def caches_prompts(*, kind: str, upstream_name: str) -> bool:
    """Whether the model takes checkpoints and bills cache writes and reads at Anthropic's prices: every model of an
    Anthropic provider, and Claude on Bedrock."""
    return kind == "anthropic" or (kind == "bedrock" and "claude" in upstream_name.lower())


def minimum_cacheable_tokens(upstream_name: str) -> int:
    name = upstream_name.lower()
    matching = (tokens for pattern, tokens in MINIMUM_CACHEABLE_TOKENS if pattern in name)
    return next(matching, DEFAULT_MINIMUM_CACHEABLE_TOKENS)


def client_marked(body: dict) -> bool:
    """Whether the client set a checkpoint itself: ``cache_control`` on a content part or on a tool."""
    if any(isinstance(tool, dict) and tool.get("cache_control") for tool in body.get("tools") or []):
        return True
    return any(
        isinstance(part, dict) and part.get("cache_control")
        for message in body.get("messages") or []
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


@dataclass(frozen=True, slots=True)
class Checkpoints:
    """Where the gateway marks a request: at the end of its tools, of its system prompt, of the turns before its last.
    The adapter puts each in its provider's form."""

    tools: bool = False
    system: bool = False
    history: bool = False

    def __bool__(self) -> bool:
        return self.tools or self.system or self.history


NO_CHECKPOINTS = Checkpoints()


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _translated_role(message: dict) -> str:
    """The role the message has at the provider, where a tool's result is the user's."""
    role = message.get("role")
    return "user" if role == "tool" else str(role)


def _history(messages: list[dict]) -> list[dict]:
    """The turns before the last one: every turn but the trailing run of one role, which the adapters merge into the
    provider's last message."""
    turns = [message for message in messages if message.get("role") not in SYSTEM_ROLES]
    end = len(turns)
    while end and _translated_role(turns[end - 1]) == _translated_role(turns[-1]):
        end -= 1
    return turns[:end]


def _turn_texts(message: dict) -> Iterable[str]:
    yield _text(message.get("content"))
    if message.get("tool_calls"):
        yield orjson.dumps(message["tool_calls"]).decode()


def _prefix_segments(body: dict, *, tools_sent: bool) -> tuple[list[str], list[str], list[str]]:
    """The texts of the three parts of the prefix, in the provider's order: tools, system prompt, history."""
    tools = [orjson.dumps(tool.get("function") or tool).decode() for tool in (body.get("tools") or [])]
    messages = body.get("messages") or []
    system = [_text(message.get("content")) for message in messages if message.get("role") in SYSTEM_ROLES]
    history = [text for message in _history(messages) for text in _turn_texts(message)]
    return (tools if tools_sent else []), [text for text in system if text], [text for text in history if text]


def _utf8_length(texts: Iterable[str]) -> int:
    return sum(len(text) if text.isascii() else len(text.encode("utf-8", "replace")) for text in texts)


@lru_cache(maxsize=COUNTED_WINDOWS)
def _window_tokens(window: str, model: str) -> int:
    return count_text_tokens(window, model=model)


def _tokens_still_needed(texts: Iterable[str], needed: int, *, model: str) -> int:
    """``needed`` less the tokens of ``texts``, counted a window at a time until none is needed any more (then 0 or
    less): whatever the length of the prefix, counting reads about as much text as the minimum takes. A stable
    prefix comes back request after request, with the same windows: their counts are remembered."""
    for text in texts:
        position = 0
        while needed > 0 and position < len(text):
            window = text[position : position + needed * CHARS_PER_TOKEN_WINDOW]
            needed -= _window_tokens(window, model)
            position += len(window)
        if needed <= 0:
            break
    return needed


def prompt_checkpoints(body: dict, *, kind: str, tools_sent: bool = True) -> Checkpoints:
    """Where the gateway marks the request (``body["model"]`` the upstream name): at the end of each part of the prefix
    that is present and long enough, counted from the start of the request, to reach the model's minimum. None for a
    model that does not cache prompts, or when the client marked the request itself. ``tools_sent``: whether the
    provider's request carries the tools (Bedrock leaves them out under ``tool_choice: none``)."""
    model = body["model"]
    if not caches_prompts(kind=kind, upstream_name=model) or client_marked(body):
        return NO_CHECKPOINTS
    segments = _prefix_segments(body, tools_sent=tools_sent)
    needed = minimum_cacheable_tokens(model)
    # A token is at least one byte: a prefix of fewer bytes than the minimum is not counted at all.
    if _utf8_length(text for segment in segments for text in segment) < needed:
        return NO_CHECKPOINTS
    marks = []
    for texts in segments:
        if needed > 0:
            needed = _tokens_still_needed(texts, needed, model=model)
        marks.append(needed <= 0 and bool(texts))
    return Checkpoints(*marks)


def may_write_cache(body: dict, *, kind: str, upstream_name: str, provider_cache: str) -> bool:
    """Whether the request may make the model write to its prompt cache, at the write price: the client marked it, or
    the gateway may (``provider_cache`` auto and a prefix long enough by its bytes alone). Reads nothing but lengths,
    so the worst case of a request is an upper bound without counting its tokens."""
    if not caches_prompts(kind=kind, upstream_name=upstream_name):
        return False
    if client_marked(body):
        return True
    if provider_cache != AUTO:
        return False
    segments = _prefix_segments(body, tools_sent=True)
    return _utf8_length(text for segment in segments for text in segment) >= minimum_cacheable_tokens(upstream_name)
