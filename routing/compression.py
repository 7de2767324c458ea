"""Context compression: keep the system messages and the most recent turns within a token budget.

Counts are exact (routing.tokens, the way OpenAI counts chat prompts). Whole turns are dropped,
oldest first; an assistant message with tool calls and the tool results that answer it go together, and the kept turns
start with a user message (Anthropic and Bedrock refuse a conversation that does not). The latest turn always stays,
its largest text message cut only when it is over budget alone or leaves no room for a user message to lead it; a
latest turn of tool calls keeps the user message it answers, cut to the room the turn leaves, or else is led by a short
placeholder user message when no summary leads.
The summary of the dropped turns is a user message: what the client sent never gains system authority by being dropped.
Counting a large conversation runs on the CPU pool (core.cpu), off the event loop.
"""

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from core.cpu import run_sized
from core.redis import async_redis
from routing.tokens import (
    MAX_TOKEN_BYTES,
    REPLY_PRIMING_TOKENS,
    count_chat_tokens,
    count_chat_tokens_async,
    count_text_tokens,
    prompt_chars,
)

logger = logging.getLogger(__name__)

PINNED_ROLES = frozenset({"system", "developer"})
TRUNCATION_MARKER = "\n[…truncated…]\n"
SUMMARY_PREFIX = "Summary of the earlier conversation, which was shortened to fit: "
# Leads the kept turns when neither the question they answer nor a summary fits in front of them.
OMITTED_TURNS = "(The earlier conversation was left out to fit.)"
# At most this share of the budget goes to the summary of the dropped turns.
SUMMARY_BUDGET_SHARE = 5
SUMMARY_CACHE_SIZE = 1024
SUMMARY_CACHE_TTL_SECONDS = 24 * 3600

Summarizer = Callable[[list[dict]], Awaitable[str]]


class SummaryRefused(Exception):
    """A summarizer refusing the whole request (it may not spend what the summary would cost), with the error to
    answer in `reason`. Any other failure of a summarizer only costs the summary."""

    def __init__(self, reason: Exception):
        super().__init__(str(reason))
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CompressionResult:
    messages: list[dict]
    tokens_before: int
    tokens_after: int
    dropped_messages: int
    truncated: bool
    summarized: bool

    @property
    def compressed(self) -> bool:
        return self.dropped_messages > 0 or self.truncated


def message_tokens(message: dict, *, model: str) -> int:
    """A message's share of the prompt: chat counts are a sum over messages plus the reply priming."""
    return count_chat_tokens([message], model=model) - REPLY_PRIMING_TOKENS


def _message_costs(messages: list[dict], *, model: str) -> list[int]:
    return [message_tokens(message, model=model) for message in messages]


def _turn_groups(indexes: list[int], messages: list[dict]) -> list[list[int]]:
    """Group unpinned message indexes so a tool call (or a legacy function call) and its results are never split."""
    groups: list[list[int]] = []
    open_call_ids: set[str] = set()
    for index in indexes:
        message = messages[index]
        role = message.get("role")
        answers_the_call = role == "function" or (
            role == "tool" and (message.get("tool_call_id") in open_call_ids or not open_call_ids)
        )
        if answers_the_call and groups:
            groups[-1].append(index)
            continue
        groups.append([index])
        open_call_ids = {call.get("id") for call in message.get("tool_calls") or [] if isinstance(call, dict)}
    return groups


def _user_led(group: list[int], messages: list[dict]) -> bool:
    return messages[group[0]].get("role") == "user"


def _says_something(cut: dict[int, dict]) -> bool:
    """A cut that leaves text in every message it cut: Anthropic and Bedrock refuse a blank one."""
    return all(message["content"].strip() for message in cut.values())


def _first_turn(messages: list[dict]) -> int | None:
    return next((index for index, message in enumerate(messages) if message.get("role") not in PINNED_ROLES), None)


def _omitted_turns_message() -> dict:
    return {"role": "user", "content": OMITTED_TURNS}


def _summary_message(summary: str) -> dict:
    return {"role": "user", "content": SUMMARY_PREFIX + summary}


def _head_and_tail(text: str, keep_chars: int) -> str:
    head = keep_chars // 2
    return text[:head] + TRUNCATION_MARKER + text[len(text) - (keep_chars - head) :]


def truncate_text(text: str, *, max_tokens: int, model: str) -> str:
    """Keep the start and the end of the text (instructions and the question usually sit there) within max_tokens."""
    # No token stands for more than MAX_TOKEN_BYTES bytes, so more characters than this cannot fit.
    most_chars = max_tokens * MAX_TOKEN_BYTES
    if len(text) <= most_chars and count_text_tokens(text, model=model) <= max_tokens:
        return text
    # Binary search on characters; only a candidate whose exact count fits is returned.
    best, low, high = "", 0, min(len(text) - 1, most_chars)
    while low <= high:
        keep_chars = (low + high) // 2
        candidate = _head_and_tail(text, keep_chars)
        if count_text_tokens(candidate, model=model) <= max_tokens:
            best, low = candidate, keep_chars + 1
        else:
            high = keep_chars - 1
    return best


def _truncated_message(message: dict, *, max_tokens: int, model: str) -> dict | None:
    """The message with its text cut to fit max_tokens, or None when it has no plain text to cut."""
    content = message.get("content")
    if not isinstance(content, str):
        return None
    framing = message_tokens({**message, "content": ""}, model=model)
    if framing >= max_tokens:
        return None
    return {**message, "content": truncate_text(content, max_tokens=max_tokens - framing, model=model)}


def _truncated_with_cost(message: dict, *, max_tokens: int, model: str) -> tuple[dict, int] | None:
    cut = _truncated_message(message, max_tokens=max_tokens, model=model)
    return None if cut is None else (cut, message_tokens(cut, model=model))


async def _fitted(
    indexes: list[int], costs: list[int], messages: list[dict], *, available: int, model: str
) -> tuple[dict[int, dict], int]:
    """A turn that must stay, its largest text message cut when it is over `available` alone: the cut message by
    index, and what the turn costs (still over `available` when no cut fits)."""
    cost = sum(costs[index] for index in indexes)
    if cost <= available:
        return {}, cost
    largest = max(indexes, key=lambda index: costs[index])
    room = available - (cost - costs[largest])
    if room <= 0:
        return {}, cost
    cut = await run_sized(
        prompt_chars([messages[largest]]), _truncated_with_cost, messages[largest], max_tokens=room, model=model
    )
    if cut is None:
        return {}, cost
    return {largest: cut[0]}, cost - costs[largest] + cut[1]


class SummaryCache:
    """Summaries of dropped turns by a hash of those turns: an in-process LRU, and Redis when configured."""

    def __init__(self, size: int = SUMMARY_CACHE_SIZE):
        self.size = size
        self._entries: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def key(namespace: str, messages: list[dict]) -> str:
        digest = hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return f"llmops:summary:{namespace}:{digest}"

    async def get(self, key: str) -> str | None:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        client = async_redis()
        if client is None:
            return None
        try:
            value = await client.get(key)
        except Exception:
            logger.warning("summary cache read from Redis failed", exc_info=True)
            return None
        if value is None:
            return None
        self._remember(key, value.decode())
        return self._entries[key]

    async def set(self, key: str, summary: str) -> None:
        self._remember(key, summary)
        client = async_redis()
        if client is None:
            return
        try:
            await client.set(key, summary, ex=SUMMARY_CACHE_TTL_SECONDS)
        except Exception:
            logger.warning("summary cache write to Redis failed", exc_info=True)

    def _remember(self, key: str, summary: str) -> None:
        self._entries[key] = summary
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


summary_cache = SummaryCache()


async def _summary_of(
    dropped: list[dict], *, summarize: Summarizer, namespace: str, max_tokens: int, model: str
) -> dict | None:
    key = SummaryCache.key(namespace, dropped)
    summary = await summary_cache.get(key)
    if summary is None:
        try:
            summary = (await summarize(dropped)).strip()
        except SummaryRefused:
            raise
        except Exception:
            # A failed summary costs context, not the request.
            logger.warning("summarizing dropped turns failed; compressing without a summary", exc_info=True)
            return None
        if not summary:
            return None
        await summary_cache.set(key, summary)
    return _truncated_message(_summary_message(summary), max_tokens=max_tokens, model=model)


async def compress_messages(
    messages: list[dict],
    *,
    budget: int,
    model: str,
    summarize: Summarizer | None = None,
    namespace: str = "",
    tokens_before: int | None = None,
) -> CompressionResult:
    """Fit the conversation in `budget` prompt tokens (reply priming included, as OpenAI counts).

    `namespace` scopes cached summaries (pass the tenant id). If the system messages alone are over
    budget the result stays over it; the caller decides what to do (caps reject it). `tokens_before` is the
    conversation's count when the caller has it.
    """
    size = prompt_chars(messages)
    if tokens_before is None:
        tokens_before = await run_sized(size, count_chat_tokens, messages, model=model)
    if tokens_before <= budget:
        return CompressionResult(list(messages), tokens_before, tokens_before, 0, False, False)
    costs = await run_sized(size, _message_costs, messages, model=model)
    pinned = [index for index, message in enumerate(messages) if message.get("role") in PINNED_ROLES]
    groups = _turn_groups([index for index in range(len(messages)) if index not in set(pinned)], messages)
    available = budget - REPLY_PRIMING_TOKENS - sum(costs[index] for index in pinned)
    summary_reserve = budget // SUMMARY_BUDGET_SHARE if summarize is not None and len(groups) > 1 else 0
    replaced: dict[int, dict] = {}
    kept: set[int] = set()
    if groups:
        latest = len(groups) - 1
        kept = {latest}
        latest_cost = sum(costs[index] for index in groups[latest])
        asked = next((position for position in range(latest, -1, -1) if _user_led(groups[position], messages)), None)
        lead_cost = 0
        if asked != latest:
            # Calls and their results: a tool result makes little sense without the question, and Anthropic and
            # Bedrock refuse a conversation the assistant leads. The question gets the room the latest turn leaves,
            # or up to half when the latest is over alone and cut anyway; else the placeholder's room is kept.
            question_room = available - latest_cost if latest_cost <= available else max(available, 0) // 2
            question_cut, question_cost = {}, None
            if asked is not None:
                question_cut, question_cost = await _fitted(
                    groups[asked], costs, messages, available=question_room, model=model
                )
            if question_cost is not None and question_cost <= question_room and _says_something(question_cut):
                replaced |= question_cut
                kept.add(asked)
                lead_cost = question_cost
            else:
                lead_cost = message_tokens(_omitted_turns_message(), model=model)
        latest_cut, used = await _fitted(groups[latest], costs, messages, available=available - lead_cost, model=model)
        replaced |= latest_cut
        used += lead_cost
        for position in range(latest - 1, -1, -1):
            if position in kept:
                continue
            group_cost = sum(costs[index] for index in groups[position])
            if used + group_cost > available - summary_reserve:
                break
            kept.add(position)
            used += group_cost
        if asked in kept:
            # Older turns that would lead the kept ones without a user message go to the summary instead.
            while not _user_led(groups[min(kept)], messages):
                kept.remove(min(kept))
    kept_indexes = {index for position in kept for index in groups[position]} | set(pinned)
    dropped = [messages[index] for index in range(len(messages)) if index not in kept_indexes]
    result = [replaced.get(index, messages[index]) for index in range(len(messages)) if index in kept_indexes]
    summarized = False
    if dropped and summarize is not None:
        room = budget - await count_chat_tokens_async(result, model=model)
        # A summary is paid for before it is cut to the room left: none is asked for where not even its prefix fits
        # (the kept turns fill the budget, or overrun it and the caller refuses the request anyway).
        if room > message_tokens(_summary_message(""), model=model):
            summary = await _summary_of(dropped, summarize=summarize, namespace=namespace, max_tokens=room, model=model)
            if summary is not None:
                result.insert(_first_turn(result) or 0, summary)
                summarized = True
    first_turn = _first_turn(result)
    if first_turn is not None and result[first_turn].get("role") != "user":
        # Neither the question nor a summary leads: the placeholder does, in the room kept for it.
        result.insert(first_turn, _omitted_turns_message())
    return CompressionResult(
        messages=result,
        tokens_before=tokens_before,
        tokens_after=await count_chat_tokens_async(result, model=model),
        dropped_messages=len(dropped),
        truncated=bool(replaced),
        summarized=summarized,
    )
