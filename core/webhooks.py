"""Signed webhooks, one scheme for every sender (job callbacks, alert channels): Standard Webhooks.

Each POST carries, per https://www.standardwebhooks.com:
  webhook-id: the message's id, the same on every retry of it, so a receiver can drop one it has already seen
  webhook-timestamp: Unix seconds when it was signed
  webhook-signature: v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<raw body>">
A receiver checks them with the ``standardwebhooks`` package, ``Webhook(secret).verify(body, headers)``, which also
refuses a timestamp more than five minutes away from its clock.

The HMAC key of a stored secret: a Standard Webhooks secret (``whsec_`` then base64, as job webhook secrets are) is
its decoded bytes; any other text (an alert channel's secret as typed in the admin) is its UTF-8 bytes, the key
it was used as before the scheme moved to Standard Webhooks, so the receiver keeps it and passes
``Webhook(secret.encode())``.
"""

import base64
import binascii
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

# How /api/jobs/webhook-secret names the scheme: Standard Webhooks' symmetric (HMAC-SHA256) signatures.
WEBHOOK_SCHEME = "standard-webhooks-v1"
SECRET_PREFIX = "whsec_"
# The spec asks for 24 to 64 random bytes.
SECRET_BYTES = 32


def webhook_secret_new() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_secret_error(secret: str) -> str | None:
    """Why a secret cannot be stored, or None. A ``whsec_`` secret must be base64 that decodes to a key: a receiver's
    ``Webhook(secret)`` decodes it leniently (dropping what is not base64) and would check another key than ours."""
    if secret.startswith(SECRET_PREFIX) and webhook_key(secret) == secret.encode():
        return "A secret that starts with whsec_ must continue in standard base64 (A–Z, a–z, 0–9, +, /, = padding)."
    return None


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a stored secret (see the module's docstring)."""
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            key = b""
        if key:
            return key
    return secret.encode()


def webhook_headers(*, secret: str, message_id: str, body: bytes) -> dict[str, str]:
    """The three headers that sign ``body`` as message ``message_id``, now."""
    now = datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(webhook_key(secret)).sign(message_id, now, body),
    }
