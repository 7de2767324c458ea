"""What the response cache keeps encrypted (core/crypto.py, LLMOPS_ENCRYPTION_KEY): answers, in Postgres and
Redis alike, and the prompt text of semantic entries. Anything that cannot be opened is None: a miss, never an error
(an entry written under a key since dropped from LLMOPS_ENCRYPTION_KEY, a corrupt value)."""

import orjson

from core.crypto import CredentialDecryptionError, decrypt_bytes, encrypt_bytes


def seal_answer(answer: dict) -> str:
    return encrypt_bytes(orjson.dumps(answer)).decode()


def open_answer(sealed: bytes | str):
    """The decoded JSON of a sealed answer, or None; the caller checks it is an answer."""
    try:
        return orjson.loads(decrypt_bytes(sealed.encode() if isinstance(sealed, str) else sealed))
    except (CredentialDecryptionError, orjson.JSONDecodeError):
        return None


def seal_prompt(prompt: str) -> str:
    return encrypt_bytes(prompt.encode()).decode()


def open_prompt(sealed: str) -> str | None:
    try:
        return decrypt_bytes(sealed.encode()).decode()
    except CredentialDecryptionError:
        return None
