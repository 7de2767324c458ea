"""The redaction matrix: every kind, a positive it must replace and look-alikes it must leave alone."""

import re

import pytest

from core import redaction
from core.redaction import (
    API_KEY,
    AWS_ACCESS_KEY,
    AWS_SECRET_KEY,
    CARD,
    CUSTOM,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    JWT,
    PHONE,
    SECRET_PREFILTER,
    SECRET_RULES,
    compile_custom_patterns,
    custom_pattern_errors,
    iban_valid,
    luhn_valid,
    redact,
    redact_value,
    secret_kinds_in,
)

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)

# (kind, text containing it, the secret part that must disappear)
POSITIVES = [
    (EMAIL, "write to jane.doe+billing@example.co.uk today", "jane.doe+billing@example.co.uk"),
    (EMAIL, "CC: ops@sub.corp-mail.io", "ops@sub.corp-mail.io"),
    (PHONE, "call +1 (415) 555-0132 now", "+1 (415) 555-0132"),
    (PHONE, "mobile +44 20 7946 0958", "+44 20 7946 0958"),
    (PHONE, "office (212) 555-0199", "(212) 555-0199"),
    (PHONE, "office 212-555-0199", "212-555-0199"),
    (CARD, "card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111"),
    (CARD, "card 5500-0000-0000-0004", "5500-0000-0000-0004"),
    (CARD, "amex 378282246310005", "378282246310005"),
    (CARD, "amex 3782 822463 10005 on file", "3782 822463 10005"),
    (CARD, "diners 3056-930902-5904", "3056-930902-5904"),
    (CARD, "discover:6011111111111117.", "6011111111111117"),
    (CARD, "mastercard 2223 0031 2200 3222", "2223 0031 2200 3222"),
    (CARD, "card 4111 1111 1111 1111 123 is the CVV", "4111 1111 1111 1111"),
    (CARD, "cc4111111111111111", "4111111111111111"),
    (CARD, "card No.4111111111111111 on file", "4111111111111111"),
    (CARD, "Visa-4111111111111111", "4111111111111111"),
    (CARD, "card 4111.1111.1111.1111", "4111.1111.1111.1111"),
    (IBAN, "iban DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
    (IBAN, "GB82WEST12345698765432", "GB82WEST12345698765432"),
    (API_KEY, "key sk-proj-abcdEFGH1234ijklMNOP5678qrst", "sk-proj-abcdEFGH1234ijklMNOP5678qrst"),
    (API_KEY, "OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz012345", "sk-abcdefghijklmnopqrstuvwxyz012345"),
    (
        API_KEY,
        "anthropic sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx-yz_0123",
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx-yz_0123",
    ),
    (API_KEY, "gh token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
    (API_KEY, "oauth gho_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "gho_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
    (API_KEY, "slack xoxb-123456789012-abcdefghijkl", "xoxb-123456789012-abcdefghijkl"),
    (API_KEY, "hook https://hooks.slack.com/services/T000/B000/XXXXXXXX", "hooks.slack.com/services/T000"),
    (API_KEY, "stripe sk_live_51HxYzAbCdEfGhIjKlMnOp", "sk_live_51HxYzAbCdEfGhIjKlMnOp"),
    (API_KEY, "maps AIzaSyA-1234567890abcdefghijklmnopqrstu", "AIzaSyA-1234567890abcdefghijklmnopqrstu"),
    (API_KEY, "ours llmops-0a1b2c3d4e5f-Zx9_abcdEFGHijklMNOPqrst", "llmops-0a1b2c3d4e5f-Zx9_abcdEFGHijklMNOPqrst"),
    (API_KEY, "Authorization: Bearer abcDEF123456ghiJKL789", "abcDEF123456ghiJKL789"),
    (AWS_ACCESS_KEY, "id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    (AWS_SECRET_KEY, f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET),
    (AWS_SECRET_KEY, f'"SecretAccessKey": "{AWS_SECRET}"', AWS_SECRET),
    (AWS_SECRET_KEY, f"bedrock AKIAIOSFODNN7EXAMPLE:{AWS_SECRET}", AWS_SECRET),
    (JWT, f"token {JWT_TOKEN}", JWT_TOKEN),
    (IP_ADDRESS, "from 203.0.113.42:443", "203.0.113.42"),
    (IP_ADDRESS, "host 10.0.0.1.", "10.0.0.1"),
    (IP_ADDRESS, "v6 2001:db8:85a3::8a2e:370:7334 seen", "2001:db8:85a3::8a2e:370:7334"),
    (IP_ADDRESS, "v6 fe80::1 local", "fe80::1"),
]

# Look-alikes that must come through unchanged.
NEGATIVES = [
    ("16 digits failing Luhn", "order 4111 1111 1111 1112 shipped"),
    ("a long plain number", "id 1234567890123456"),
    ("IBAN failing mod-97", "DE89 3704 0044 0532 0130 01"),
    ("a date", "due 2024-01-15 at 10:30:00"),
    ("a version", "release 1.2.3 and 10.2"),
    ("an invalid IPv4", "999.1.1.1"),
    ("a dotted version with four parts", "build 1.2.3.4.5"),
    ("an email without a domain", "user@localhost"),
    ("a short sk- word", "sk-learn is a library"),
    ("a ghp_ prefix too short", "ghp_short"),
    ("an AKIA word too short", "AKIA1234"),
    ("40 characters with no AWS context", f"hash {AWS_SECRET}"),
    ("a two-part eyJ string", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0"),
    ("C++ scope", "std::vector and a::b"),
    ("a time", "12:30:45"),
    ("a bare word Bearer", "the bearer of bad news"),
    ("a price", "costs 1299.99 USD"),
    ("a short number", "room 212"),
    # Each of these passes Luhn as a run of digits, and was masked as a card before separators and prefixes counted.
    ("a Redis stream id", "ledger entry 1733350000005-0 cannot be written"),
    ("an epoch in milliseconds", "at 1733350000001 ms"),
    ("an epoch in microseconds", "ts=1733350000000001"),
    ("a request id with a run of digits", "request req_027333500000000000ab12cd failed"),
    ("card-like digits with mixed separators", "ref 4111 1111-1111 1111"),
    ("the decimals of a number", "ratio 0.4111111111111111"),
]


@pytest.mark.parametrize(
    ("kind", "text", "secret"), POSITIVES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(POSITIVES)]
)
def test_each_kind_is_replaced_by_its_placeholder(kind, text, secret):
    redacted = redact(text)
    assert secret not in redacted
    assert kind in redacted


@pytest.mark.parametrize(("label", "text"), NEGATIVES, ids=[label for label, _ in NEGATIVES])
def test_look_alikes_are_left_alone(label, text):
    assert redact(text) == text


def test_text_around_a_secret_survives():
    assert redact("mail a@b.com or call +1 415 555 0132, thanks") == "mail [EMAIL] or call [PHONE], thanks"


def test_anthropic_key_is_not_half_redacted_as_openai():
    assert redact("sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx") == API_KEY


def test_luhn_and_mod97():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")


def test_tenant_patterns_are_applied_after_the_built_in_ones():
    patterns = compile_custom_patterns((r"\bPROJ-\d{4}\b", r"(?i)codename\s+\w+"))
    assert redact("PROJ-1234 is codename Falcon; mail x@y.org", custom_patterns=patterns) == (
        f"{CUSTOM} is {CUSTOM}; mail {EMAIL}"
    )


def test_invalid_or_oversized_tenant_patterns_are_reported():
    assert custom_pattern_errors([r"ok\d+"]) == []
    assert len(custom_pattern_errors(["(unclosed", "x" * 501])) == 2


def test_json_values_keep_their_shape():
    body = {"messages": [{"role": "user", "content": "my card 4111111111111111"}], "n": 1, "ok": True}
    assert redact_value(body) == {"messages": [{"role": "user", "content": f"my card {CARD}"}], "n": 1, "ok": True}


def test_secret_kinds_ignore_personal_data():
    assert secret_kinds_in("mail a@b.com from 10.0.0.1") == []
    assert secret_kinds_in("here: sk-abcdefghijklmnopqrstuvwxyz012345 and AKIAIOSFODNN7EXAMPLE") == [
        API_KEY,
        AWS_ACCESS_KEY,
    ]


PREFILTER_TEXTS = [text for _, text, _ in POSITIVES] + [text for _, text in NEGATIVES]
PREFILTER_TEXTS += [text.upper() for text in PREFILTER_TEXTS] + [text.lower() for text in PREFILTER_TEXTS]


def test_the_prefilter_changes_no_answer(monkeypatch):
    """``secret_kinds_in`` answers [] at once when ``SECRET_PREFILTER`` finds nothing: on every text of the matrix,
    upper- and lower-cased too, it answers what the rules alone answer, and it finds something wherever a rule
    does."""
    filtered = [secret_kinds_in(text) for text in PREFILTER_TEXTS]
    monkeypatch.setattr(redaction, "SECRET_PREFILTER", re.compile(""))
    unfiltered = [secret_kinds_in(text) for text in PREFILTER_TEXTS]

    assert filtered == unfiltered
    assert sum(map(bool, filtered)) >= 15
    for text in PREFILTER_TEXTS:
        if any(rule.pattern.search(text) for rule in SECRET_RULES):
            assert SECRET_PREFILTER.search(text) is not None, text
    assert not all(SECRET_PREFILTER.search(text) for text in PREFILTER_TEXTS)


@pytest.mark.parametrize(
    "pattern",
    [
        r"key[\b:]\w+",
        r"(?!\bdemo\b)sk-\w+",
        r"(?<!\b)sk-\w+",
        r"(k)\w+\1",
        r"(?P<k>k)(?P=k)",
        r"[]\b]k",
        r"(?>a\bb|a)bc",
        r"x(?:a\bb|a)?+bc",
        r"(?x)\bk # a comment",
    ],
    ids=[
        "backspace in a class",
        "negative lookahead",
        "negative lookbehind",
        "backreference",
        "named",
        "class ]",
        "atomic group",
        "possessive",
        "verbose",
    ],
)
def test_a_rule_the_prefilter_cannot_widen_is_refused_at_import(pattern):
    rule = redaction.Rule("[X]", re.compile(pattern), "[X]", True)
    with pytest.raises(redaction.CannotWiden):
        redaction._widened((rule,))


def test_a_rules_compile_flags_apply_to_its_branch_only():
    loud = redaction.Rule("[X]", re.compile(r"\bsecret-\w+", re.IGNORECASE), "[X]", True)
    quiet = redaction.Rule("[Y]", re.compile(r"\bquiet-\w+"), "[Y]", True)
    widened = redaction._widened((loud, quiet))

    assert widened.search("SECRET-abc") and widened.search("quiet-abc")
    assert not widened.search("QUIET-abc")


def test_a_rules_ascii_flag_and_escaped_group_syntax_keep_their_meaning():
    ascii_rule = redaction.Rule("[X]", re.compile(r"\bkey\W\w+", re.ASCII), "[X]", True)
    escaped = redaction.Rule("[Y]", re.compile(r"\(?P<x>\bk"), "[Y]", True)

    assert redaction._widened((ascii_rule,)).search("keyé1")
    assert redaction._widened((escaped,)).search("(P<x>k")
