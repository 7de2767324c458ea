"""Redaction of personal data and secrets from text before it is stored or logged.

It lives in tenants, the bottom of the dependency chain, because every layer needs it: the logging
filter, payload logs, the audit log and the gateway's answer check. Patterns are compiled once; each
rule is one linear pass. Rules run in order, most specific first, so an API key is not half-eaten
as a phone number; a candidate that fails its checksum (Luhn for cards, mod-97 for IBANs) is kept.
"""

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import regex

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IBAN = "[IBAN]"
API_KEY = "[API_KEY]"
AWS_ACCESS_KEY = "[AWS_ACCESS_KEY]"
AWS_SECRET_KEY = "[AWS_SECRET_KEY]"
JWT = "[JWT]"
IP_ADDRESS = "[IP]"
CUSTOM = "[REDACTED]"

MAX_CUSTOM_PATTERN_CHARS = 500


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


# Card numbers as people write them: 13 to 19 digits in one run, or grouped the way the card shows them with one
# separator throughout (4-4-4-4 with up to 3 more digits, Amex 4-6-5, Diners 4-6-4), not inside a longer number or a
# longer run of groups (an IBAN), but right after a word or a label ("cc4111…", "No.4111…", "Visa-4111…"). Stream ids
# ("1733350000000-0"), request ids and decimals do not have these shapes, or fail the issuer and Luhn checks.
CARD_PATTERN = re.compile(
    r"(?<!\d)(?<!\d[ .-])(?:\d{13,19}"
    r"|\d{4}(?P<sep>[ .-])\d{4}(?P=sep)\d{4}(?P=sep)\d{4}(?:(?P=sep)\d{1,3})?"
    r"|\d{4}(?P<amex>[ -])\d{6}(?P=amex)\d{4,5})(?!\d)(?![.-]\d)"
)
# Issuer prefixes of payment cards: 3 (Amex, JCB, Diners), 4 (Visa), 5 (Mastercard, Maestro), 6 (Discover,
# UnionPay, Maestro), 22-27 (Mastercard's 2-series, Mir). Epoch timestamps (1...) and dates (20...) are not cards.
CARD_ISSUER_PREFIXES = ("3", "4", "5", "6", "22", "23", "24", "25", "26", "27")


def _card_number(candidate: str) -> bool:
    digits = re.sub(r"[ .-]", "", candidate)
    return digits.startswith(CARD_ISSUER_PREFIXES) and luhn_valid(digits)


def _card(match: re.Match) -> str:
    candidate = match.group(0)
    if _card_number(candidate):
        return CARD
    # Sixteen grouped digits followed by an unrelated short number ("4111 1111 1111 1111 123"): the card alone.
    separator = match.group("sep")
    if separator and candidate.count(separator) == 4:
        head, tail = candidate.rsplit(separator, 1)
        if _card_number(head):
            return f"{CARD}{separator}{tail}"
    return candidate


def _iban(match: re.Match) -> str:
    return IBAN if iban_valid(match.group(0).replace(" ", "")) else match.group(0)


def _phone(match: re.Match) -> str:
    digit_count = sum(char.isdigit() for char in match.group(0))
    return PHONE if 7 <= digit_count <= 15 else match.group(0)


def _ipv6(match: re.Match) -> str:
    candidate = match.group(0)
    if not any(char.isdigit() for char in candidate):
        return candidate
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return candidate
    return IP_ADDRESS


def _keep_prefix(placeholder: str) -> Callable[[re.Match], str]:
    """Replace only the secret group, keeping the label in front of it (``aws_secret_access_key=``)."""

    def replace(match: re.Match) -> str:
        group = next(name for name in ("secret", "after_id") if name in match.re.groupindex and match.group(name))
        return match.group(0)[: match.start(group) - match.start(0)] + placeholder

    return replace


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    pattern: re.Pattern
    replacement: str | Callable[[re.Match], str]
    is_secret: bool


RULES: tuple[Rule, ...] = (
    Rule(JWT, re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"), JWT, True),
    Rule(API_KEY, re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}"), API_KEY, True),
    Rule(API_KEY, re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"), API_KEY, True),
    Rule(API_KEY, re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"), API_KEY, True),
    Rule(API_KEY, re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"), API_KEY, True),
    Rule(API_KEY, re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), API_KEY, True),
    Rule(
        API_KEY, re.compile(r"https://hooks\.slack\.com/(?:services|triggers|workflows)/[A-Za-z0-9/_-]+"), API_KEY, True
    ),
    Rule(API_KEY, re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), API_KEY, True),
    Rule(API_KEY, re.compile(r"\bllmops-[0-9a-f]{12}-[A-Za-z0-9_-]{16,}"), API_KEY, True),
    Rule(API_KEY, re.compile(r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/-]{16,}=*)"), _keep_prefix(API_KEY), True),
    Rule(AWS_ACCESS_KEY, re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"), AWS_ACCESS_KEY, True),
    # A secret access key is 40 base64 characters, too common a shape alone: it needs its label, or to follow
    # an access key id the way Bedrock credentials are written (ACCESS_KEY_ID:SECRET_ACCESS_KEY).
    Rule(
        AWS_SECRET_KEY,
        re.compile(
            r"(?i:aws_?secret_?access_?key|secret_?access_?key|aws_?secret)[\"']?\s*[:=]\s*[\"']?"
            r"(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
            r"|\[AWS_ACCESS_KEY\][:\s]"
            r"(?P<after_id>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
        ),
        _keep_prefix(AWS_SECRET_KEY),
        True,
    ),
    Rule(EMAIL, re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), EMAIL, False),
    Rule(IBAN, re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), _iban, False),
    Rule(CARD, CARD_PATTERN, _card, False),
    Rule(
        PHONE,
        re.compile(
            r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\w)"
            r"|(?<![\w.-])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w.-])"
        ),
        _phone,
        False,
    ),
    Rule(
        IP_ADDRESS,
        re.compile(
            r"(?<!\d\.)(?<!\w)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)(?!\w)"
        ),
        IP_ADDRESS,
        False,
    ),
    Rule(IP_ADDRESS, re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), _ipv6, False),
)
SECRET_RULES = tuple(rule for rule in RULES if rule.is_secret)


class CannotWiden(ValueError):
    """A secret pattern the prefilter cannot widen safely: write its widened form by hand."""


# Compile flags, as the scoped inline flags that give a branch of the alternation the same meaning.
_INLINE_FLAGS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.ASCII, "a"))
_LEADING_FLAGS = re.compile(r"^(?:\(\?[aiLmsux]+\))+")


def _without_word_boundaries(source: str) -> str:
    """``source`` without its ``\\b`` assertions, which only widens what it matches, and with its groups unnamed;
    refused where dropping one could narrow it (inside a negative lookaround, or where an atomic group or a possessive
    quantifier commits to a branch) or change it (in a character class, where it is a backspace), and for
    backreferences, which the alternation would renumber."""
    kept, depth_negative, index, in_class = [], [], 0, False
    dropped, commits = False, False
    while index < len(source):
        char = source[index]
        if char == "\\":
            pair = source[index : index + 2]
            if pair == "\\b" and (in_class or any(depth_negative)):
                raise CannotWiden(f"a word boundary in a character class or a negative lookaround: {source}")
            if pair[1:].isdigit():
                raise CannotWiden(f"a backreference: {source}")
            if pair == "\\b":
                dropped = True
            else:
                kept.append(pair)
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A ']' first in a class (after an optional '^') is a literal.
            closing = index + 1 + (source[index + 1 : index + 2] == "^")
            if source[closing : closing + 1] == "]":
                kept.append(source[index : closing + 1])
                index = closing + 1
                continue
        elif char == "(":
            if source.startswith(("(?P=", "(?("), index):
                raise CannotWiden(f"a backreference: {source}")
            commits |= source.startswith("(?>", index)
            depth_negative.append(source.startswith(("(?!", "(?<!"), index))
            if source.startswith("(?P<", index):
                kept.append("(?:")
                index = source.index(">", index) + 1
                continue
        elif char == ")":
            if not depth_negative:
                raise CannotWiden(f"a group this scanner cannot follow: {source}")
            depth_negative.pop()
        elif char == "+" and kept and kept[-1][-1] in "*+?}":
            commits = True
        kept.append(char)
        index += 1
    if dropped and commits:
        raise CannotWiden(f"a word boundary beside an atomic group or a possessive quantifier: {source}")
    return "".join(kept)


def _widened(rules: tuple[Rule, ...]) -> re.Pattern:
    """One pattern that matches wherever one of ``rules``' patterns does, and maybe elsewhere: each pattern without
    its word boundaries and its group names, with its flags scoped to its branch, as one alternation. A text it
    finds nothing in holds no secret: one scan of about 14 µs for a short answer instead of the rules' 33 (a
    pattern that starts with a word boundary keeps Python's regex engine from skipping ahead)."""
    branches = []
    for rule in rules:
        if rule.pattern.flags & re.VERBOSE:
            raise CannotWiden(f"{rule.kind}: a verbose pattern (write it on one line)")
        source = _without_word_boundaries(_LEADING_FLAGS.sub("", rule.pattern.pattern))
        flags = "".join(letter for flag, letter in _INLINE_FLAGS if rule.pattern.flags & flag)
        branches.append(f"(?{flags}:{source})")
    return re.compile("|".join(branches))


SECRET_PREFILTER = _widened(SECRET_RULES)


def _compile_custom_pattern(pattern: str) -> regex.Pattern:
    # The `regex` module, whose substitutions take a timeout: a tenant's pattern may backtrack without end. Its version
    # 0 reads a pattern as Python's re does.
    return regex.compile(pattern, regex.V0)


@lru_cache(maxsize=256)
def compile_custom_patterns(patterns: tuple[str, ...]) -> tuple[regex.Pattern, ...]:
    """A tenant's own patterns, compiled once per distinct set. Invalid ones raise regex.error (checked at save)."""
    return tuple(_compile_custom_pattern(pattern) for pattern in patterns if pattern)


def custom_pattern_errors(patterns: Iterable[str]) -> list[str]:
    errors = []
    for pattern in patterns:
        if len(pattern) > MAX_CUSTOM_PATTERN_CHARS:
            errors.append(f"{pattern[:40]}…: longer than {MAX_CUSTOM_PATTERN_CHARS} characters")
            continue
        try:
            _compile_custom_pattern(pattern)
        except regex.error as exc:
            errors.append(f"{pattern}: {exc}")
    return errors


def redact(text: str, *, custom_patterns: tuple[regex.Pattern, ...] = (), pattern_timeout: float | None = None) -> str:
    """`text` with every recognised secret and personal datum replaced by its typed placeholder. Raises TimeoutError
    when one of ``custom_patterns`` runs longer than ``pattern_timeout`` seconds."""
    for rule in RULES:
        text = rule.pattern.sub(rule.replacement, text)
    for pattern in custom_patterns:
        text = pattern.sub(CUSTOM, text, timeout=pattern_timeout)
    return text


def _redacted_storable(text: str, custom_patterns: tuple[regex.Pattern, ...], pattern_timeout: float | None) -> str:
    # PostgreSQL's jsonb cannot hold NUL: the stored copy shows U+FFFD in its place.
    return redact(text, custom_patterns=custom_patterns, pattern_timeout=pattern_timeout).replace("\x00", "\ufffd")


def redact_value(value, *, custom_patterns: tuple[regex.Pattern, ...] = (), pattern_timeout: float | None = None):
    """Redact every string inside a JSON-like value (dict keys included), keeping its shape; the copy can be stored
    in a jsonb column (NUL becomes U+FFFD). Raises TimeoutError as redact does."""
    if isinstance(value, str):
        return _redacted_storable(value, custom_patterns, pattern_timeout)
    if isinstance(value, dict):
        return {
            _redacted_storable(str(key), custom_patterns, pattern_timeout): redact_value(
                item, custom_patterns=custom_patterns, pattern_timeout=pattern_timeout
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(item, custom_patterns=custom_patterns, pattern_timeout=pattern_timeout) for item in value]
    return value


def secret_kinds_in(text: str) -> list[str]:
    """The kinds of credential (not personal data) that appear in `text`, for checks that refuse rather than redact."""
    if SECRET_PREFILTER.search(text) is None:
        return []
    kinds = []
    for rule in SECRET_RULES:
        for match in rule.pattern.finditer(text):
            replaced = rule.replacement(match) if callable(rule.replacement) else rule.replacement
            if replaced != match.group(0):
                kinds.append(rule.kind)
                break
    return kinds
