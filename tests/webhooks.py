"""A receiver of llmops' signed webhooks, as its docs tell one to be written: the standardwebhooks package."""

from datetime import datetime, timedelta
from unittest import mock

import pytest
import standardwebhooks.webhooks
from standardwebhooks import Webhook, WebhookVerificationError

# The package refuses a timestamp more than five minutes from the receiver's clock.
REPLAY_DELAY = timedelta(minutes=6)


def verify_at(webhook: Webhook, body: bytes, headers: dict, *, later: timedelta):
    """Verify as a receiver whose clock reads ``later`` past now: the same delivery replayed then."""

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + later

    with mock.patch.object(standardwebhooks.webhooks, "datetime", Later):
        return webhook.verify(body, headers)


def assert_verified_and_not_forgeable(webhook: Webhook, body: bytes, headers: dict) -> dict:
    """The delivery verifies and its payload comes back; the same body changed, or replayed later, does not."""
    payload = webhook.verify(body, headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        webhook.verify(body.replace(b"}", b', "injected": true}', 1), headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        webhook.verify(body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 60)})
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_at(webhook, body, headers, later=REPLAY_DELAY)
    return payload
