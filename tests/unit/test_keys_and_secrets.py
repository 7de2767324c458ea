import pytest
from cryptography.fernet import Fernet

from core import crypto
from tenants.keys import generate_key, hash_secret, parse_key, secret_matches


def test_a_generated_key_parses_and_matches_only_its_hash():
    full_key, prefix, secret_hash = generate_key()

    parsed = parse_key(full_key)
    assert parsed.prefix == prefix
    assert secret_matches(parsed.secret, secret_hash)
    assert not secret_matches(parsed.secret + "x", secret_hash)
    assert secret_hash == hash_secret(parsed.secret) and parsed.secret not in secret_hash


@pytest.mark.parametrize(
    "raw", ["", "sk-abc", "llmops-", "llmops-abc-def", "llmops-0123456789ab-", "other-0123456789ab-x"]
)
def test_malformed_keys_do_not_parse(raw):
    assert parse_key(raw) is None


def test_credentials_survive_key_rotation(settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.LLMOPS_ENCRYPTION_KEY = old_key
    token = crypto.encrypt_secret("sk-provider-secret")

    settings.LLMOPS_ENCRYPTION_KEY = f"{new_key},{old_key}"

    assert crypto.decrypt_secret(token) == "sk-provider-secret"
    settings.LLMOPS_ENCRYPTION_KEY = new_key
    with pytest.raises(crypto.CredentialDecryptionError):
        crypto.decrypt_secret(token)
