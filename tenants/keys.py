"""Gateway API key format: ``llmops-<prefix>-<secret>``.

The prefix is public (shown in the admin, used for lookup); only a SHA-256 of the secret is
stored. Secrets carry 240 bits of randomness, so a fast hash is enough, and the comparison is
constant-time.
"""

import hashlib
import hmac
import secrets
from typing import NamedTuple

KEY_SCHEME = "llmops"
PREFIX_LENGTH = 12
SECRET_BYTES = 30


class ParsedKey(NamedTuple):
    prefix: str
    secret: str


def generate_key() -> tuple[str, str, str]:
    """Return (full key, prefix, secret hash)."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return f"{KEY_SCHEME}-{prefix}-{secret}", prefix, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(raw: str) -> ParsedKey | None:
    scheme, sep, rest = raw.partition("-")
    if scheme != KEY_SCHEME or not sep:
        return None
    prefix, sep, secret = rest.partition("-")
    if len(prefix) != PREFIX_LENGTH or not sep or not secret:
        return None
    return ParsedKey(prefix, secret)


def secret_matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
