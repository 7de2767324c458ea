"""Encryption at rest for provider credentials (Fernet).

LLMOPS_ENCRYPTION_KEY holds one or more comma-separated Fernet keys: the first encrypts,
all of them decrypt, so a key can be rotated without losing what older keys wrote.
"""

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class CredentialDecryptionError(Exception):
    pass


@lru_cache(maxsize=4)
def _fernet(configured_keys: str, secret_key: str) -> MultiFernet:
    keys = [k.strip() for k in configured_keys.split(",") if k.strip()]
    if not keys:
        # Embedded demo only: derive a stable key from SECRET_KEY.
        keys = [base64.urlsafe_b64encode(hashlib.sha256(secret_key.encode()).digest()).decode()]
    return MultiFernet([Fernet(k) for k in keys])


def _current_fernet() -> MultiFernet:
    return _fernet(settings.LLMOPS_ENCRYPTION_KEY, settings.SECRET_KEY)


def encrypt_secret(plaintext: str) -> str:
    return _current_fernet().encrypt(plaintext.encode()).decode()


def decrypt_secret(token: str) -> str:
    try:
        return _current_fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise CredentialDecryptionError("provider credential cannot be decrypted with the configured keys") from exc
