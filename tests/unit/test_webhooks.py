"""The one webhook signer (core.webhooks) against the Standard Webhooks verifier a receiver uses."""

import base64

import pytest
from django.core.exceptions import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from billing.alerts.services import alert_channel_create
from core.webhooks import webhook_headers, webhook_key, webhook_secret_error, webhook_secret_new
from tenants.services import tenant_create
from tests.webhooks import assert_verified_and_not_forgeable

BODY = b'{"type": "budget.threshold", "threshold_percent": 80}'


def test_a_new_secret_is_a_standard_webhooks_secret_of_32_random_bytes():
    secret = webhook_secret_new()

    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != webhook_secret_new()


@pytest.mark.parametrize(
    ("secret", "receiver_key"),
    [
        pytest.param(webhook_secret_new(), None, id="whsec secret, passed as it is"),
        pytest.param("whsec_" + "0123456789abcdef" * 3, None, id="job secret made before, passed as it is"),
        pytest.param("s3cret", b"s3cret", id="secret typed as text, passed as its bytes"),
        pytest.param("whsec_not base64!", b"whsec_not base64!", id="text that only looks like whsec"),
    ],
)
def test_a_receiver_verifies_with_the_secret_it_holds(secret, receiver_key):
    headers = webhook_headers(secret=secret, message_id="job_abc", body=BODY)

    payload = assert_verified_and_not_forgeable(Webhook(receiver_key or secret), BODY, headers)

    assert payload["threshold_percent"] == 80 and headers["webhook-id"] == "job_abc"
    assert headers["webhook-signature"].startswith("v1,")


def test_text_secrets_keep_their_bytes_as_the_key():
    assert webhook_key("s3cret") == b"s3cret"
    assert webhook_key("whsec_" + base64.b64encode(b"k" * 24).decode()) == b"k" * 24


def test_another_message_id_or_secret_does_not_verify():
    headers = webhook_headers(secret="s3cret", message_id="alert_delivery_1", body=BODY)

    with pytest.raises(WebhookVerificationError):
        Webhook(b"s3cret").verify(BODY, {**headers, "webhook-id": "alert_delivery_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(b"other").verify(BODY, headers)


@pytest.mark.parametrize("secret", ["whsec_ab-cd_efgh", "whsec_", "whsec_not base64!"])
def test_a_whsec_secret_that_is_not_standard_base64_is_refused(secret):
    # A receiver's Webhook(secret) would decode it leniently to another key than the one the gateway signs with.
    assert webhook_secret_error(secret) is not None


@pytest.mark.parametrize("secret", ["whsec_" + base64.b64encode(b"k" * 32).decode(), "plain text secret"])
def test_a_secret_a_receiver_reads_as_we_do_is_accepted(secret):
    assert webhook_secret_error(secret) is None


@pytest.mark.django_db
def test_an_alert_channel_refuses_a_whsec_secret_receivers_would_decode_differently():
    with pytest.raises(ValidationError) as refused:
        alert_channel_create(
            tenant=tenant_create(slug="acme"),
            name="hook",
            kind="webhook",
            target="https://hooks.example.com/llmops",
            signing_secret="whsec_ab-cd_efgh",
        )
    assert "signing_secret" in refused.value.message_dict
