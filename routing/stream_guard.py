"""The answer guard on a streamed chat answer (routing.injection_guard checks a complete one).

Under flag, what a stream wrote is collected by choice and field (AnswerTexts) and checked once, when it ends. Under
block no credential may reach the client, not even its first characters: AnswerHoldBack sends an event only once
every text it wrote to (a choice's content or refusal, a call's arguments) has grown by the hold-back past it, or is
finished, so a secret that starts in the event is whole, and seen, before the event goes out.
"""

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.redaction import SECRET_PREFILTER, SECRET_RULES
from routing.injection_guard import REPEATED_CREDENTIAL, GuardVerdict, SecretEchoBlocked, guarded_secrets, shaped_like
from routing.models import InjectionGuardAction

# Characters of each text held back under block. core.redaction's credential shapes are recognised at most about 70
# characters after they start (a labelled AWS secret access key: its label, separators and 40 characters; the others
# within 15 to 40); the rest is room for the spaces a few shapes allow (`Bearer   …`) and for new shapes. A tenant's
# credential longer than this holds back its own length instead.
HOLD_BACK_CHARS = 256
# What a text still being written may go on with: a shape that must end where the text ends so far (an AWS access key
# id, a Google API key) counts once the character after it is known.
CONTINUATION = "A"

# Where a piece of the answer goes: (choice index, "content" | "refusal" | "function_call" | "tool_calls[<index>]").
TextKey = tuple[int, str]


def chunk_texts(chunk: dict) -> list[tuple[TextKey, str]]:
    """The text a chat.completion.chunk adds to the answer, by where it goes: each choice's content and refusal, and
    the arguments of its function call and of each of its tool calls."""
    texts = []
    for choice in chunk.get("choices") or []:
        index, delta = choice.get("index") or 0, choice.get("delta") or {}
        named = {name: delta.get(name) for name in ("content", "refusal")}
        function_call = delta.get("function_call")
        if isinstance(function_call, dict):
            named["function_call"] = function_call.get("arguments")
        for position, tool_call in enumerate(delta.get("tool_calls") or []):
            function = tool_call.get("function")
            if isinstance(function, dict):
                named[f"tool_calls[{tool_call.get('index', position)}]"] = function.get("arguments")
        texts.extend(((index, name), text) for name, text in named.items() if isinstance(text, str) and text)
    return texts


@dataclass(slots=True)
class AnswerTexts:
    """Everything a stream wrote, by where it went: what the guard checks once the stream ends (under flag)."""

    parts: dict[TextKey, list[str]] = field(default_factory=dict)

    def add(self, chunk: dict) -> None:
        for key, text in chunk_texts(chunk):
            self.parts.setdefault(key, []).append(text)

    def texts(self) -> list[str]:
        return ["".join(parts) for parts in self.parts.values()]


@dataclass(slots=True)
class _Text:
    """One text of the answer as the hold-back sees it: its length so far, its last characters (the hold-back and
    one more, which gives a word boundary at the window's start its context), and whether it may still grow."""

    tail: str = ""
    length: int = 0
    writing: bool = True

    @property
    def cut(self) -> bool:
        return self.length > len(self.tail)


@dataclass(slots=True)
class _HeldEvent:
    event: str
    # Each text the event wrote to, and its length just after.
    ends: list[tuple[_Text, int]]


class AnswerHoldBack:
    """Holds a stream's events back until no secret the answer guard looks for can start in them unseen (under block).

    Each new piece of a text is checked with the hold-back's worth of characters before it, so the work per event is
    bounded by the hold-back and the event's size. A text is finished when its choice's finish reason arrives or the
    stream ends; the events of a text that stops growing before then (a choice's content before its tool call) wait
    until that moment."""

    def __init__(self, known_secrets: Iterable[str]):
        self.secrets = guarded_secrets(known_secrets)
        self.hold_chars = max([HOLD_BACK_CHARS, *map(len, self.secrets)])
        self.texts: dict[TextKey, _Text] = {}
        self.held: deque[_HeldEvent] = deque()

    def take(self, event: str, chunk: dict | None) -> list[str]:
        """The events that may go out now, oldest first (``event`` last at most); ``chunk`` is the event's data, None
        for an event that carries none. Raises SecretEchoBlocked when the answer so far shows a secret."""
        ends = []
        for key, piece in chunk_texts(chunk) if chunk is not None else ():
            text = self.texts.setdefault(key, _Text())
            self._write(text, piece)
            ends.append((text, text.length))
        for choice in (chunk or {}).get("choices") or []:
            if choice.get("finish_reason"):
                self._finish_choice(choice.get("index") or 0)
        self.held.append(_HeldEvent(event, ends))
        sendable = []
        while self.held and all(
            not text.writing or text.length - end >= self.hold_chars for text, end in self.held[0].ends
        ):
            sendable.append(self.held.popleft().event)
        return sendable

    def finish(self) -> list[str]:
        """The stream is complete: the last check of every text's end, then every event still held. Raises
        SecretEchoBlocked as ``take`` does."""
        for text in self.texts.values():
            self._end(text)
        sendable = [held.event for held in self.held]
        self.held.clear()
        return sendable

    def _write(self, text: _Text, piece: str) -> None:
        window = text.tail + piece
        # A window that does not start where the text does skips its first character, which is there only as the
        # context of the next one: whatever starts there ends before the new piece, and was checked already.
        self._check(window, start=1 if text.cut else 0, writing=True)
        text.tail = window[-(self.hold_chars + 1) :]
        text.length += len(piece)
        text.writing = True

    def _finish_choice(self, index: int) -> None:
        for (choice, _), text in self.texts.items():
            if choice == index:
                self._end(text)

    def _end(self, text: _Text) -> None:
        if text.writing:
            text.writing = False
            self._check(text.tail, start=1 if text.cut else 0, writing=False)

    def _check(self, window: str, *, start: int, writing: bool) -> None:
        reasons = [REPEATED_CREDENTIAL] if any(secret in window for secret in self.secrets) else []
        reasons += [shaped_like(kind) for kind in shapes_in(window, start=start, writing=writing)]
        if reasons:
            raise SecretEchoBlocked(GuardVerdict(action=InjectionGuardAction.BLOCK, reasons=tuple(reasons)))


def shapes_in(window: str, *, start: int = 0, writing: bool = False) -> list[str]:
    """The kinds of credential shape (core.redaction's secret rules, as ``secret_kinds_in`` finds them) in ``window``
    from ``start``, the characters before it giving word boundaries their context. Of a text still ``writing``, a match
    that runs to the end counts only if it holds whatever comes next: an AWS access key id is one only if no letter
    or digit follows its twentieth character."""
    if SECRET_PREFILTER.search(window, start) is None:
        return []
    kinds = []
    for rule in SECRET_RULES:
        for match in rule.pattern.finditer(window, start):
            if not writing or match.end() < len(window) or rule.pattern.match(window + CONTINUATION, match.start()):
                kinds.append(rule.kind)
                break
    return list(dict.fromkeys(kinds))
