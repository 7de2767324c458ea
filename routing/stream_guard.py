"""The answer guard on a streamed chat answer (routing.injection_guard checks a complete one).

Under flag, what a stream wrote is collected by choice and field (AnswerTexts) and checked once, when it ends. Under
block no credential may reach the client, not even its first characters: AnswerHoldBack sends an event only once
every text it wrote to (a choice's content, refusal or reasoning, a call's arguments) has grown by the hold-back past
it, and past the end of any credential of unbounded length that may have started in it, or the stream has ended, so a
secret that starts in the event is whole, and seen, before the event goes out.
"""

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.redaction import API_KEY, AWS_SECRET_KEY, JWT, SECRET_PREFILTER, SECRET_RULES
from routing.injection_guard import (
    REPEATED_CREDENTIAL,
    WRITTEN_FIELDS,
    GuardVerdict,
    SecretEchoBlocked,
    guarded_secrets,
    shaped_like,
    written_text,
)
from routing.models import InjectionGuardAction

# Characters of each text held back under block. Most of core.redaction's credential shapes are recognised at most
# about 70 characters after they start (a labelled AWS secret access key: its label, separators and 40 characters; the
# others within 15 to 40). Three have no bound, and OPEN_SHAPES follows them instead: a JWT (its three parts have no
# maximum length), a bearer token and a labelled AWS secret access key (any run of spaces after `Bearer` or the
# label). The rest is room for new shapes. A tenant's credential longer than this holds back its own length instead.
HOLD_BACK_CHARS = 256
# The beginning of a credential of unbounded length (OPEN_SHAPES) is held until it can no longer be one, or is one
# (the stream is blocked). Past this many characters it is taken for one: the stream is blocked rather than held
# without end. It bounds the text each event is checked with too.
UNBOUNDED_CAP_CHARS = 8192
# What a text still being written may go on with: a shape that must end where the text ends so far (an AWS access key
# id, a Google API key) counts once the character after it is known.
CONTINUATION = "A"

_JWT_CHAR = "[A-Za-z0-9_-]"
# A JWT's first or second part after its `eyJ`: fewer than five characters so far, or five and more then what follows.
_JWT_PART = _JWT_CHAR + "{0,4}|" + _JWT_CHAR + "{5,}+"
# The beginnings of the credential shapes of unbounded length (core.redaction: JWT, bearer token, labelled AWS secret
# access key) that run to the end of the text so far: each is a string the shape's pattern could still match once the
# text goes on. Every beginning of one of these strings is one too, but for the first few characters of a shape
# (`ey`, `bearer`, a label cut short: OPEN_MARGIN at most).
OPEN_SHAPES = re.compile(
    rf"(?:(?P<jwt>\beyJ(?:{_JWT_PART}(?:\.(?:e(?:y(?:J(?:{_JWT_PART}(?:\.{_JWT_CHAR}*+)?))?)?)?)?))"
    r"|(?P<bearer>(?i:\bbearer)\s++[A-Za-z0-9._~+/-]{0,15})"
    r"|(?P<aws>(?i:aws_?secret_?access_?key|secret_?access_?key|aws_?secret)[\"']?\s*+"
    r"(?:[:=]\s*+[\"']?[A-Za-z0-9/+]{0,40})?))\Z"
)
OPEN_KINDS = {"jwt": JWT, "bearer": API_KEY, "aws": AWS_SECRET_KEY}
OPEN_MARGIN = 32

# Where a piece of the answer goes: (choice index, "content" | "refusal" | "reasoning_content" | "reasoning" |
# "function_call" | "tool_calls[<index>]").
TextKey = tuple[int, str]


def chunk_texts(chunk: dict) -> list[tuple[TextKey, str]]:
    """The text a chat.completion.chunk adds to the answer, by where it goes, in order: each choice's content, refusal
    and reasoning, and the arguments (a string, or an object serialised) of its function call and of each of its tool
    calls. Pieces for the same call (two entries with one index) are all there, one after the other; a call without an
    index (or a null one) is known by its position."""
    texts = []
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        index, delta = choice.get("index") or 0, choice.get("delta") or {}
        written = [(name, delta.get(name)) for name in ("content", *WRITTEN_FIELDS)]
        function_call = delta.get("function_call")
        if isinstance(function_call, dict):
            written.append(("function_call", written_text(function_call.get("arguments"))))
        for position, tool_call in enumerate(delta.get("tool_calls") or []):
            function = tool_call.get("function") if isinstance(tool_call, dict) else None
            if isinstance(function, dict):
                call = tool_call.get("index")
                key = f"tool_calls[{position if call is None else call}]"
                written.append((key, written_text(function.get("arguments"))))
        texts.extend(((index, name), text) for name, text in written if isinstance(text, str) and text)
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
    one more, which gives a word boundary at the window's start its context, or from the character before ``opened``
    if that is earlier), and where the earliest beginning of a credential of unbounded length (OPEN_SHAPES) that is
    still open starts, if one is. Until the stream ends, every text may still grow."""

    tail: str = ""
    length: int = 0
    opened: int | None = None

    @property
    def cut(self) -> bool:
        return self.length > len(self.tail)

    def holds(self, end: int, hold_chars: int) -> bool:
        """Whether what the text had at ``end`` must still be held."""
        return self.length - end < hold_chars or (self.opened is not None and end > self.opened)


@dataclass(slots=True)
class _HeldEvent:
    event: str
    # Each text the event wrote to, and its length just after.
    ends: list[tuple[_Text, int]]


class AnswerHoldBack:
    """Holds a stream's events back until no secret the answer guard looks for can start in them unseen (under block).

    Each new piece of a text is checked with the hold-back's worth of characters before it, or from where an open
    credential of unbounded length starts if that is earlier (at most UNBOUNDED_CAP_CHARS before), so the work per
    event is bounded by the cap, the hold-back and the event's size. A text is finished only when the stream ends: a
    choice's finish reason finishes nothing, since a provider may go on writing to the choice after it, and the end
    of a text let go then could be the start of a secret. The events of a text that stops growing (the end of the
    answer, a choice's content before its tool call, a choice that finished before another) wait until the stream
    ends."""

    def __init__(self, known_secrets: Iterable[str]):
        self.secrets = guarded_secrets(known_secrets)
        self.hold_chars = max([HOLD_BACK_CHARS, *map(len, self.secrets)])
        self.texts: dict[TextKey, _Text] = {}
        self.held: deque[_HeldEvent] = deque()

    def take(self, event: str, chunk: dict | None) -> list[str]:
        """The events that may go out now, oldest first (``event`` last at most); ``chunk`` is the event's data, None
        for an event that carries none. Raises SecretEchoBlocked when the answer so far shows a secret, or the
        beginning of one of unbounded length longer than UNBOUNDED_CAP_CHARS."""
        ends = []
        for key, piece in chunk_texts(chunk) if chunk is not None else ():
            text = self.texts.setdefault(key, _Text())
            self._write(text, piece)
            ends.append((text, text.length))
        self.held.append(_HeldEvent(event, ends))
        sendable = []
        while self.held and not any(text.holds(end, self.hold_chars) for text, end in self.held[0].ends):
            sendable.append(self.held.popleft().event)
        return sendable

    def finish(self) -> list[str]:
        """The stream is complete: the last check of every text's end, then every event still held. Raises
        SecretEchoBlocked as ``take`` does."""
        for text in self.texts.values():
            self._check(text.tail, start=1 if text.cut else 0, writing=False)
        sendable = [held.event for held in self.held]
        self.held.clear()
        return sendable

    def _write(self, text: _Text, piece: str) -> None:
        base, window = text.length - len(text.tail), text.tail + piece
        # A window that does not start where the text does skips its first character, which is there only as the
        # context of the next one: whatever starts there ends before the new piece, and was checked already.
        self._check(window, start=1 if base else 0, writing=True)
        length = base + len(window)
        text.opened = self._opened(window, base, text.opened, since=text.length)
        if text.opened is not None and length - text.opened > UNBOUNDED_CAP_CHARS:
            kind = OPEN_KINDS[OPEN_SHAPES.match(window, text.opened - base).lastgroup]
            reason = f"{shaped_like(kind)} (its beginning, longer than {UNBOUNDED_CAP_CHARS} characters)"
            raise SecretEchoBlocked(GuardVerdict(action=InjectionGuardAction.BLOCK, reasons=(reason,)))
        keep = length - self.hold_chars - 1
        if text.opened is not None:
            keep = min(keep, text.opened - 1)
        text.tail = window[max(keep - base, 0) :]
        text.length = length

    @staticmethod
    def _opened(window: str, base: int, opened: int | None, *, since: int) -> int | None:
        """Where the earliest open beginning of a credential of unbounded length starts in the text (``window`` from
        ``base``, which was ``since`` long before its last piece): the one open before if it still is, else the
        first after it. With none open before, only the last piece and the OPEN_MARGIN characters before it can hold
        one: any earlier beginning was no longer one, and cannot become one again."""
        if opened is not None:
            if OPEN_SHAPES.match(window, opened - base):
                return opened
            start = opened + 1 - base
        else:
            start = max(since - OPEN_MARGIN - base, 1 if base else 0)
        found = OPEN_SHAPES.search(window, start)
        return None if found is None else base + found.start()

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
