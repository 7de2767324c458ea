"""Encryption at rest (Fernet) for provider credentials and cached prompts and answers, and keyed hashes.

LLMOPS_ENCRYPTION_KEY holds one or more comma-separated Fernet keys: the first encrypts,
all of them decrypt, so a key can be rotated without losing what older keys wrote.
Keyed hashes (HMAC-SHA256) use a key derived from SECRET_KEY for each purpose, so a hash kept next to the data
cannot be confirmed by hashing guesses without the server's secret.
"""

import base64
import hashlib
from dataclasses import dataclass
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.utils.crypto import salted_hmac


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
    return encrypt_bytes(plaintext.encode()).decode()


def decrypt_secret(token: str) -> str:
    return decrypt_bytes(token.encode()).decode()


def encrypt_bytes(plaintext: bytes) -> bytes:
    """A Fernet token (URL-safe base64, ASCII) of `plaintext` under the first configured key."""
    return _current_fernet().encrypt(plaintext)


def decrypt_bytes(token: bytes) -> bytes:
    try:
        return _current_fernet().decrypt(token)
    except InvalidToken as exc:
        raise CredentialDecryptionError("secret cannot be decrypted with the configured keys") from exc


def keyed_hash(*, purpose: str, value: bytes) -> str:
    """HMAC-SHA256 (hex) of `value` under a key derived from SECRET_KEY for `purpose` alone."""
    return salted_hmac(f"llmops.{purpose}", value, algorithm="sha256").hexdigest()


def reencrypt_secret(token: str) -> str:
    """The same secret encrypted with the first configured key (after a key rotation)."""
    try:
        return _current_fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise CredentialDecryptionError("secret cannot be decrypted with the configured keys") from exc


@dataclass(frozen=True, slots=True)
class ReencryptionResult:
    reencrypted: int
    undecryptable: list[str]


ENCRYPTED_FIELD_SUFFIX = "_encrypted"


def encrypted_secrets_reencrypt() -> ReencryptionResult:
    """Re-encrypt every stored secret (any model field named ``*_encrypted``) with the first key.

    Fields are found by name across installed apps, so secrets of apps above routing are covered without
    importing them. Rows are written with update(): only the ciphertext changes, nothing a signal must see.
    """
    reencrypted, undecryptable = 0, []
    with transaction.atomic():
        for model in apps.get_models():
            fields = [
                field.name for field in model._meta.concrete_fields if field.name.endswith(ENCRYPTED_FIELD_SUFFIX)
            ]
            for field in fields:
                # Every row, on purpose: the plain base manager, past any scoping of the default manager,
                # because key rotation re-encrypts every secret stored, and reads none out.
                rows = model._base_manager.exclude(**{field: ""}).select_for_update().values_list("pk", field)
                for pk, token in rows:
                    try:
                        new_token = reencrypt_secret(token)
                    except CredentialDecryptionError:
                        undecryptable.append(f"{model._meta.label}.{field} pk={pk}")
                        continue
                    model._base_manager.filter(pk=pk).update(**{field: new_token})
                    reencrypted += 1
    return ReencryptionResult(reencrypted=reencrypted, undecryptable=undecryptable)
