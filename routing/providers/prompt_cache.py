"""Provider prompt caching as a cost lever: the checkpoints the gateway puts on the stable prefix of a request to a
Claude model, on Anthropic's API or on Bedrock, and the client's own ``cache_control`` marks checked on their way.

Their prompt cache is read from the start of a request: the tools, then the system prompt, then the turns. A
checkpoint ends a prefix the provider writes to its cache (at the cache-write price, 1.25x the input price) and reads
back, at a tenth of the input price, for any later request that starts with exactly the same prefix within five
minutes. Where a routing rule sets ``provider_cache`` to ``auto`` (it is ``off`` unless a rule opts in: the provider's
cache is shared by every tenant behind the same provider credential, docs/provider-caching.md), the adapters mark
where the stable part of a request ends: after the tools, after the system prompt, and after the turns before the last
one (the history of a conversation, which its next turn repeats). A checkpoint is set only

- on a model of a family its provider documents prompt caching for (CLAUDE_FAMILIES: Bedrock takes a ``cachePoint``
  on fewer Claude models than Anthropic's API, and answers any other with a 400 ValidationException);
- when the catalog prices the model's cache writes and reads (``cache_priced``): a blank cache-write price would
  charge writes at the input price, a quarter under the provider's bill;
- where the prefix up to it is long enough for the provider to cache at all;

and none at all when the client marked the request itself: its own checkpoints stand as it sent them, once checked
(``client_marks``: at most four, of the 5-minute cache the catalog prices).
"""

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import orjson

from core.cpu import run_sized
from routing.tokens import MAX_TOKEN_BYTES, count_text_tokens, utf8_length

AUTO = "auto"
OFF = "off"
PROVIDER_CACHE_MODES = (AUTO, OFF)
ANTHROPIC = "anthropic"
BEDROCK = "bedrock"
# Anthropic's prices of its 5-minute cache, as multiples of the input price: the defaults of a Claude model's cache
# prices when a price file or the admin leaves them blank (routing.prices.cache_price_defaults).
CACHE_WRITE_MULTIPLIER = Decimal("1.25")
CACHE_READ_MULTIPLIER = Decimal("0.1")
# The cache lifetime the catalog's cache-write price is the price of. Anthropic bills a 1-hour write ("1h") at twice
# the input price, which no catalog price holds, so a client's cache_control asking for it is refused.
PRICED_TTL = "5m"
# Anthropic and Bedrock take at most this many checkpoints in a request; the gateway sets at most three.
MAX_CHECKPOINTS = 4
# Counting a prefix's tokens, when its length alone does not tell, reads at most this many characters per token of the
# model's minimum (English runs about four characters a token), a window of CHARS_PER_TOKEN_WINDOW characters per
# token still needed at a time; the rest of the prefix counts a token per MAX_TOKEN_BYTES bytes.
COUNTED_CHARS_PER_TOKEN = 8
CHARS_PER_TOKEN_WINDOW = 4
SYSTEM_ROLES = ("system", "developer")
# The content parts the translations send as text blocks, and all those they send (CARRIED_PARTS).
TEXT_PARTS = ("text", "refusal")
CARRIED_PARTS = (*TEXT_PARTS, "image_url")


@dataclass(frozen=True, slots=True)
class ClaudeFamily:
    tier: str  # opus, sonnet or haiku
    version: str  # "3", "3.5", "4", "4.1", ...
    # The fewest tokens a prefix must hold to be cached: Anthropic's "minimum cacheable prompt length", which its
    # documentation says applies on every platform serving the model.
    minimum_tokens: int
    # The provider kinds that take a checkpoint on this model.
    kinds: frozenset[str]


ANTHROPIC_API = frozenset({ANTHROPIC})
EVERYWHERE = frozenset({ANTHROPIC, BEDROCK})
# The Claude models whose provider documents prompt caching, by kind (docs/provider-caching.md says where each fact
# comes from). Anthropic's API caches every Claude 3 and later model but Claude 3 Sonnet, never listed for it. Bedrock
# caches Claude 3.7 Sonnet, 3.5 Haiku and the 4 family; Claude 3 Haiku and Opus and 3.5 Sonnet (v1, and v2 outside
# the preview's accounts) answer a cachePoint with a 400. A model of no family here gets no checkpoint.
CLAUDE_FAMILIES = (
    ClaudeFamily("opus", "3", 1024, ANTHROPIC_API),
    ClaudeFamily("haiku", "3", 2048, ANTHROPIC_API),
    ClaudeFamily("sonnet", "3.5", 1024, ANTHROPIC_API),
    ClaudeFamily("haiku", "3.5", 2048, EVERYWHERE),
    ClaudeFamily("sonnet", "3.7", 1024, EVERYWHERE),
    ClaudeFamily("sonnet", "4", 1024, EVERYWHERE),
    ClaudeFamily("opus", "4", 1024, EVERYWHERE),
    ClaudeFamily("opus", "4.1", 1024, EVERYWHERE),
    ClaudeFamily("sonnet", "4.5", 1024, EVERYWHERE),
    ClaudeFamily("haiku", "4.5", 4096, EVERYWHERE),
    ClaudeFamily("opus", "4.5", 4096, EVERYWHERE),
    ClaudeFamily("sonnet", "4.6", 1024, EVERYWHERE),
    ClaudeFamily("opus", "4.6", 4096, EVERYWHERE),
)
_FAMILIES = {(family.tier, family.version): family for family in CLAUDE_FAMILIES}
# Claude's names as Anthropic's API and Bedrock give them: claude-3-5-haiku-20241022, claude-sonnet-4-5-20250929,
# claude-opus-4-1, us.anthropic.claude-3-7-sonnet-20250219-v1:0. A minor version is one digit; a date has eight.
_VERSION_FIRST = re.compile(r"claude-(\d+)(?:-(\d)(?!\d))?-(opus|sonnet|haiku)(?![a-z])")
_TIER_FIRST = re.compile(r"claude-(opus|sonnet|haiku)-(\d+)(?:-(\d)(?!\d))?")


def claude_family(upstream_name: str) -> ClaudeFamily | None:
    """The model's family in CLAUDE_FAMILIES, by its upstream name (a Bedrock model id, inference profile or its ARN
    included); None for a model of none, an application inference profile's ARN among them (it names no model)."""
    name = upstream_name.lower()
    if match := _VERSION_FIRST.search(name):
        major, minor, tier = match.groups()
    elif match := _TIER_FIRST.search(name):
        tier, major, minor = match.groups()
    else:
        return None
    version = major if minor in (None, "0") else f"{major}.{minor}"
    return _FAMILIES.get((tier, version))


def checkpoint_family(*, kind: str, upstream_name: str) -> ClaudeFamily | None:
    """The model's family when it takes the gateway's checkpoints on a provider of this kind (the provider documents
    prompt caching for it); None when it takes none."""
    family = claude_family(upstream_name)
    return family if family is not None and kind in family.kinds else None


def bills_cache_as_anthropic(*, kind: str, upstream_name: str) -> bool:
    """Whether the provider bills the model's prompt cache at Anthropic's multiples of its input price (writes 1.25x,
    reads 0.1x) when a request marks it: Claude, on Anthropic's API or on Bedrock."""
    return kind == ANTHROPIC or (kind == BEDROCK and "claude" in upstream_name.lower())


class CachePrices(Protocol):
    """What deciding on checkpoints reads of a model's prices (routing.catalog.ModelPrices)."""

    input_per_million: Decimal
    cached_input_per_million: Decimal
    cache_write_per_million: Decimal | None


def cache_priced(prices: CachePrices) -> bool:
    """Whether the catalog prices the model's cache writes and reads, as the provider bills them: a cache-write price
    is set (blank charges writes at the input price) and the cache-read price is not the input price (what a version
    saved before cache prices existed holds)."""
    return prices.cache_write_per_million is not None and prices.cached_input_per_million != prices.input_per_million


def effective_provider_cache(provider_cache: str, *, prices: CachePrices) -> str:
    """The routing rule's ``provider_cache`` as it applies to a model at these prices: auto only where the catalog
    prices the model's cache (``cache_priced``), so the gateway never sets a checkpoint whose write it would charge
    below the bill; off otherwise."""
    return AUTO if provider_cache == AUTO and cache_priced(prices) else OFF


class CacheControlRefused(ValueError):
    """A client's ``cache_control`` that Anthropic or Bedrock would refuse, or bill beyond the catalog's prices:
    ``param`` is where the request set it, ``code`` the error's code."""

    def __init__(self, message: str, *, param: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code


def part_text(part: dict) -> str | None:
    """The text of a content part the translations send as a text block (held under its type's name): a text, or an
    assistant's refusal, which is text it said. None for any other part."""
    kind = part.get("type")
    return part.get(kind) if kind in TEXT_PARTS else None


def carried_part(part: dict) -> bool:
    """Whether a content part reaches Anthropic's or Bedrock's API as a block of its own, its ``cache_control`` with
    it: a text or a refusal with some non-whitespace text (both refuse a blank text block), or an image. The
    translations refuse a part of any other type (a file)."""
    if part.get("type") == "image_url":
        return True
    text = part_text(part)
    return text is not None and not blank(text)


def blank(text: str) -> bool:
    """Empty or whitespace only: what Anthropic and Bedrock refuse as a text block (read up to the first other
    character, nothing copied)."""
    return not text or text.isspace()


def _marks(body: dict, *, tools_sent: bool) -> Iterator[tuple[str, object]]:
    """The client's ``cache_control`` marks that reach the provider, with where each was set: on a tool (LiteLLM's
    place for it, when the tools are sent), on a carried content part, and on a tool's result (one mark, the last of
    its parts', as the result is one block)."""
    if tools_sent:
        for index, tool in enumerate(body.get("tools") or []):
            if isinstance(tool, dict) and tool.get("cache_control") is not None:
                yield f"tools[{index}].cache_control", tool["cache_control"]
    for index, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        marked = [
            (f"messages[{index}].content[{position}].cache_control", part["cache_control"])
            for position, part in enumerate(content)
            if isinstance(part, dict)
            and part.get("cache_control") is not None
            and (message.get("role") == "tool" or carried_part(part))
        ]
        yield from marked[-1:] if message.get("role") == "tool" else marked


def client_marked(body: dict, *, tools_sent: bool = True) -> bool:
    """Whether the client set a checkpoint of its own that reaches the provider (``_marks``)."""
    return next(_marks(body, tools_sent=tools_sent), None) is not None


def _checked_mark(param: str, mark) -> None:
    if not isinstance(mark, dict):
        raise CacheControlRefused(f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    if mark.get("type") != "ephemeral":
        raise CacheControlRefused(
            f"Invalid value for '{param}.type': {mark.get('type')!r}. Supported values are: 'ephemeral'.",
            param=f"{param}.type",
        )
    ttl = mark.get("ttl")
    if ttl is not None and ttl != PRICED_TTL:
        raise CacheControlRefused(
            f"'{param}.ttl' {ttl!r} is not supported by this gateway: only the 5-minute cache ('{PRICED_TTL}', the "
            "default) is priced in its catalog, and a 1-hour cache write is billed at twice the input price, so its "
            f"cost could not be held within budgets. Leave 'ttl' out or send '{PRICED_TTL}'.",
            param=f"{param}.ttl",
            code="unsupported_parameter",
        )


def client_marks(body: dict, *, tools_sent: bool = True) -> int:
    """How many checkpoints of its own the client set that reach the provider (``_marks``), each checked: an object of
    type ``ephemeral``, of the 5-minute cache, and at most MAX_CHECKPOINTS of them. Raises CacheControlRefused for
    what Anthropic or Bedrock would refuse, or bill beyond the catalog's prices (a 1-hour cache)."""
    marks = list(_marks(body, tools_sent=tools_sent))
    for param, mark in marks:
        _checked_mark(param, mark)
    if len(marks) > MAX_CHECKPOINTS:
        param = marks[MAX_CHECKPOINTS][0]
        raise CacheControlRefused(
            f"Invalid value for '{param}': the request sets {len(marks)} cache_control breakpoints that reach the "
            f"provider, and Anthropic and Bedrock take at most {MAX_CHECKPOINTS} (this is the fifth).",
            param=param,
        )
    return len(marks)


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
        return "".join(text for part in content if isinstance(part, dict) and isinstance(text := part_text(part), str))
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
    if isinstance(message.get("refusal"), str):
        yield message["refusal"]
    if message.get("tool_calls"):
        yield orjson.dumps(message["tool_calls"]).decode()


def _prefix_segments(body: dict, *, tools_sent: bool) -> tuple[list[str], list[str], list[str]]:
    """The texts of the three parts of the prefix, in the provider's order: tools, system prompt, history."""
    tools = [orjson.dumps(tool.get("function") or tool).decode() for tool in (body.get("tools") or [])]
    messages = body.get("messages") or []
    system = [_text(message.get("content")) for message in messages if message.get("role") in SYSTEM_ROLES]
    history = [text for message in _history(messages) for text in _turn_texts(message)]
    return (tools if tools_sent else []), [text for text in system if text], [text for text in history if text]


def _bytes_bound(size: int) -> int:
    """The fewest tokens a text of ``size`` UTF-8 bytes can be: no token stands for more than MAX_TOKEN_BYTES."""
    return -(-size // MAX_TOKEN_BYTES)


class _PrefixCount:
    """The tokens of a prefix that grows part by part, as far as deciding it reaches a minimum needs: never counted
    when its bytes are fewer than the minimum (a token is at least a byte) or its bytes alone make the minimum (a token
    is at most MAX_TOKEN_BYTES bytes); otherwise its first characters are counted with tiktoken, a window at a time
    and ``budget`` characters in all, and the rest counts a token per MAX_TOKEN_BYTES bytes."""

    def __init__(self, model: str, *, budget: int):
        self.model = model
        self.budget = budget
        self.bytes = 0
        self.counted = 0
        self.uncounted: deque[tuple[str, int]] = deque()
        self.uncounted_bound = 0

    def add(self, texts: Iterable[str]) -> None:
        for text in texts:
            size = utf8_length(text)
            self.bytes += size
            self._pending(text, size, at_end=True)

    def _pending(self, text: str, size: int, *, at_end: bool) -> None:
        bound = _bytes_bound(size)
        (self.uncounted.append if at_end else self.uncounted.appendleft)((text, bound))
        self.uncounted_bound += bound

    def reaches(self, minimum: int) -> bool:
        if self.bytes < minimum:
            return False
        while self.counted + self.uncounted_bound < minimum and self.uncounted and self.budget > 0:
            text, bound = self.uncounted.popleft()
            self.uncounted_bound -= bound
            needed = minimum - self.counted - self.uncounted_bound
            window = text[: min(self.budget, needed * CHARS_PER_TOKEN_WINDOW)]
            self.counted += count_text_tokens(window, model=self.model)
            self.budget -= len(window)
            if rest := text[len(window) :]:
                self._pending(rest, utf8_length(rest), at_end=False)
        return self.counted + self.uncounted_bound >= minimum


@dataclass(frozen=True, slots=True)
class _Prefix:
    """A request's prefix as the checkpoints are decided on it, for a model that takes them."""

    model: str
    minimum: int
    segments: tuple[list[str], list[str], list[str]]

    @property
    def counted_chars(self) -> int:
        """At most how many characters deciding reads with tiktoken."""
        chars = sum(len(text) for texts in self.segments for text in texts)
        return min(chars, self.minimum * COUNTED_CHARS_PER_TOKEN)

    def checkpoints(self) -> Checkpoints:
        """A checkpoint at the end of each part that is present and brings the prefix to the model's minimum."""
        count = _PrefixCount(self.model, budget=self.minimum * COUNTED_CHARS_PER_TOKEN)
        marks = []
        for texts in self.segments:
            count.add(texts)
            marks.append(bool(texts) and count.reaches(self.minimum))
        return Checkpoints(*marks)


def _prefix(body: dict, *, kind: str, tools_sent: bool) -> _Prefix | None:
    """The prefix to decide on; None for a model that takes no checkpoint or a request the client marked."""
    family = checkpoint_family(kind=kind, upstream_name=body["model"])
    if family is None or client_marked(body, tools_sent=tools_sent):
        return None
    return _Prefix(body["model"], family.minimum_tokens, _prefix_segments(body, tools_sent=tools_sent))


def prompt_checkpoints(body: dict, *, kind: str, tools_sent: bool = True) -> Checkpoints:
    """Where the gateway marks the request (``body["model"]`` the upstream name): at the end of each part of the prefix
    that is present and long enough, counted from the start of the request, to reach the model's minimum. None for a
    model that takes no checkpoint (``checkpoint_family``), or when the client marked the request itself.
    ``tools_sent``: whether the provider's request carries the tools (Bedrock leaves them out under
    ``tool_choice: none``).

    Lengths decide without counting wherever they can; otherwise at most COUNTED_CHARS_PER_TOKEN characters per token
    of the minimum are counted (bench/provider_cache.py measures the worst case)."""
    prefix = _prefix(body, kind=kind, tools_sent=tools_sent)
    return NO_CHECKPOINTS if prefix is None else prefix.checkpoints()


async def gateway_checkpoints(body: dict, *, kind: str, provider_cache: str, tools_sent: bool = True) -> Checkpoints:
    """``prompt_checkpoints`` under the rule's ``provider_cache`` as it applies to the model (none unless auto),
    counted on the CPU pool when counting may read much text (core.cpu)."""
    prefix = _prefix(body, kind=kind, tools_sent=tools_sent) if provider_cache == AUTO else None
    if prefix is None:
        return NO_CHECKPOINTS
    return await run_sized(prefix.counted_chars, prefix.checkpoints)


def may_write_cache(body: dict, *, kind: str, upstream_name: str, provider_cache: str) -> bool:
    """Whether the request may make the model write to its prompt cache, at the write price: the client marked it, or
    the gateway may (``provider_cache`` auto as it applies to the model, and a prefix long enough by its bytes alone).
    Reads nothing but lengths, so the worst case of a request is an upper bound without counting its tokens."""
    if not bills_cache_as_anthropic(kind=kind, upstream_name=upstream_name):
        return False
    if client_marked(body):
        return True
    family = checkpoint_family(kind=kind, upstream_name=upstream_name)
    if provider_cache != AUTO or family is None:
        return False
    segments = _prefix_segments(body, tools_sent=True)
    return sum(utf8_length(text) for texts in segments for text in texts) >= family.minimum_tokens
