"""Prompt-injection guard: checks user and tool content for override phrases, attempts to reveal
the system prompt, and base64/hex payloads that decode to either. Cheap regexes, run before the call.
After the call, the answer check refuses answers that echo a credential back (exfiltration)."""

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from core.redaction import secret_kinds_in
from routing.models import InjectionGuardAction
from routing.policy.errors import RoutingRefusal
from routing.providers.base import REASONING_FIELDS

CHECKED_ROLES = frozenset({"user", "tool"})
OVERRIDE_PATTERN = re.compile(
    r"\b(ignore|disregard|forget|override|bypass)\s+(all\s+|any\s+|the\s+|your\s+|my\s+)*"
    r"(previous|prior|above|earlier|preceding|system|original)\s+(instructions?|prompts?|rules|directions|messages?)"
    r"|\byou\s+are\s+now\s+(dan|in\s+developer\s+mode|jailbroken|unrestricted)\b"
    r"|\bnew\s+system\s+(prompt|instructions?)\s*:"
    r"|\bdo\s+anything\s+now\b",
    re.IGNORECASE,
)
REVEAL_PATTERN = re.compile(
    r"\b(reveal|show|print|repeat|output|display|tell\s+me|give\s+me|what\s+(is|are|were))\s+"
    r"(me\s+)?(your|the)\s+(full\s+|exact\s+|original\s+|hidden\s+|initial\s+)*"
    r"(system\s+(prompt|message|instructions?)|initial\s+instructions?|hidden\s+instructions?|instructions\s+above)",
    re.IGNORECASE,
)
BASE64_BLOB = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")
HEX_BLOB = re.compile(r"\b(?:[0-9a-fA-F]{2}){16,}\b")


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    action: str
    reasons: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def blocked(self) -> bool:
        return self.flagged and self.action == InjectionGuardAction.BLOCK


CLEAN = GuardVerdict(action=InjectionGuardAction.NONE, reasons=())


class PromptInjectionBlocked(RoutingRefusal):
    def __init__(self, verdict: GuardVerdict):
        super().__init__(
            f"The request was blocked by the prompt-injection guard: {'; '.join(verdict.reasons)}.",
            status=400,
            code="prompt_injection_detected",
            param="messages",
        )
        self.verdict = verdict


def _texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return []


def _decoded_payloads(text: str) -> list[tuple[str, str]]:
    """(encoding, decoded text) for each blob that decodes to readable text."""
    payloads = []
    for blob in BASE64_BLOB.findall(text):
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        payloads.append(("base64", decoded))
    for blob in HEX_BLOB.findall(text):
        try:
            payloads.append(("hex", bytes.fromhex(blob).decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            continue
    return payloads


def _findings(text: str) -> list[str]:
    findings = []
    if match := OVERRIDE_PATTERN.search(text):
        findings.append(f"override phrase {match.group(0)!r}")
    if match := REVEAL_PATTERN.search(text):
        findings.append(f"attempt to reveal the system prompt {match.group(0)!r}")
    return findings


def inspect_messages(messages: list[dict], *, action: str) -> GuardVerdict:
    """Check user and tool messages; `action` (none, flag, block) comes from the tenant's live policy."""
    if action == InjectionGuardAction.NONE:
        return CLEAN
    reasons = []
    for index, message in enumerate(messages):
        if message.get("role") not in CHECKED_ROLES:
            continue
        where = f"messages[{index}] ({message['role']})"
        for text in _texts(message.get("content")):
            reasons.extend(f"{finding} in {where}" for finding in _findings(text))
            for encoding, decoded in _decoded_payloads(text):
                reasons.extend(f"{encoding} payload decoding to {finding} in {where}" for finding in _findings(decoded))
    return GuardVerdict(action=action, reasons=tuple(reasons))


def guard_request(messages: list[dict], *, action: str) -> GuardVerdict:
    """Inspect and enforce: raises PromptInjectionBlocked when the policy blocks; otherwise the verdict to record."""
    verdict = inspect_messages(messages, action=action)
    if verdict.blocked:
        raise PromptInjectionBlocked(verdict)
    return verdict


class SecretEchoBlocked(RoutingRefusal):
    def __init__(self, verdict: GuardVerdict):
        super().__init__(
            f"The answer was withheld because it contained a secret: {'; '.join(verdict.reasons)}.",
            status=502,
            code="answer_contains_secret",
        )
        self.verdict = verdict


def written_text(value) -> str | None:
    """A text field of an answer as the guard reads it: a string as it is; call arguments sent as a JSON object (or
    array) rather than a string, serialised; anything else, nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:  # an integer past 64 bits, say, which json writes
            return json.dumps(value, ensure_ascii=False, default=str)
    return None


# What a message (or a delta) writes besides its content and its calls' arguments: its refusal and the reasoning some
# providers send beside the answer.
WRITTEN_FIELDS = ("refusal", *REASONING_FIELDS)


def answer_texts(answer: dict) -> list[str]:
    """The text a chat completion answer carries: message content, refusal, reasoning (``reasoning_content``,
    ``reasoning``), and function-call and tool-call arguments (strings, or objects serialised) of every choice."""
    texts = []
    for choice in answer.get("choices") or []:
        message = (choice or {}).get("message") or (choice or {}).get("delta") or {}
        texts.extend(_texts(message.get("content")))
        calls = [
            message.get("function_call"),
            *((tool_call or {}).get("function") for tool_call in message.get("tool_calls") or []),
        ]
        written = [message.get(name) for name in WRITTEN_FIELDS]
        written += [written_text(call.get("arguments")) for call in calls if isinstance(call, dict)]
        texts.extend(text for text in written if isinstance(text, str))
    return texts


MIN_KNOWN_SECRET_CHARS = 8
REPEATED_CREDENTIAL = "the answer repeats one of the tenant's credentials"


def guarded_secrets(known_secrets: Iterable[str]) -> list[str]:
    """The tenant's secrets an answer is checked for: those long enough not to turn up in it by chance."""
    return [secret for secret in known_secrets if len(secret) >= MIN_KNOWN_SECRET_CHARS]


def shaped_like(kind: str) -> str:
    return f"the answer contains a value shaped like {kind}"


def inspect_answer(texts: list[str], *, action: str, known_secrets: Iterable[str] = ()) -> GuardVerdict:
    """Check an answer for the tenant's own secrets (exact strings, e.g. the credentials of the providers that
    serve it) and for anything shaped like a credential (core.redaction's secret patterns).

    `action` is the policy's injection guard action: an echoed secret is what a successful injection exfiltrates.
    A streamed answer is checked as it goes by routing.stream_guard.
    """
    if action == InjectionGuardAction.NONE:
        return CLEAN
    secrets = guarded_secrets(known_secrets)
    reasons = []
    for text in texts:
        if any(secret in text for secret in secrets):
            reasons.append(REPEATED_CREDENTIAL)
        reasons.extend(shaped_like(kind) for kind in secret_kinds_in(text))
    return GuardVerdict(action=action, reasons=tuple(dict.fromkeys(reasons)))


def guard_answer(answer: dict, *, action: str, known_secrets: Iterable[str] = ()) -> GuardVerdict:
    """Inspect a complete answer and enforce: raises SecretEchoBlocked when the policy blocks."""
    verdict = inspect_answer(answer_texts(answer), action=action, known_secrets=known_secrets)
    if verdict.blocked:
        raise SecretEchoBlocked(verdict)
    return verdict
