"""Application logs never carry prompt text's secrets, keys or credentials, whatever a request sends."""

import logging

import httpx

from tests.security.test_redaction import POSITIVES

SECRETS = [secret for _, _, secret in POSITIVES]


def test_a_live_request_carrying_every_kind_of_secret_leaves_none_in_the_logs(app_log, acme, gateway):
    prompt = " | ".join(text for _, text, _ in POSITIVES)
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        # A card number as a tag (the first secret, an address holding `+`, is no tag the gateway takes).
        ok = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {acme.key}", "x-llmops-tags": "team=" + SECRETS[6]},
            json={"model": acme.small.name, "messages": [{"role": "user", "content": prompt}]},
        )
        refused = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {acme.key}"},
            json={"model": acme.small.name, "messages": [{"role": "user", "content": prompt}], "temperature": "hot"},
        )
        bad_key = client.post(
            "/v1/chat/completions",
            headers={"Authorization": "Bearer sk-abcdefghijklmnopqrstuvwxyz012345"},
            json={"model": acme.small.name, "messages": [{"role": "user", "content": prompt}]},
        )
        # A `user` field is the request's end customer: too long to be one (400), or a secret as one (recorded).
        bad_customer = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {acme.key}"},
            json={"model": acme.small.name, "messages": [{"role": "user", "content": prompt}], "user": prompt},
        )
        secret_customer = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {acme.key}", "x-llmops-customer": SECRETS[1]},
            json={"model": acme.small.name, "messages": [{"role": "user", "content": prompt}], "user": SECRETS[2]},
        )
    assert ok.status_code == 200
    assert (refused.status_code, bad_key.status_code, bad_customer.status_code) == (400, 401, 400)
    assert secret_customer.status_code == 200
    # Code that does log what it was given: the filter still redacts it.
    logging.getLogger("llmops.gateway").warning("prompt was %s", prompt)
    logging.getLogger("billing").error("key %s", acme.key, exc_info=ValueError(f"bad {acme.key}"))
    written = app_log.getvalue()
    assert "prompt was" in written and "[EMAIL]" in written and "ValueError" in written
    leaked = [secret for secret in [*SECRETS, acme.key] if secret in written]
    assert leaked == []


def test_records_without_args_and_with_broken_args_are_still_written(app_log):
    logger = logging.getLogger("tests.security")
    logger.info("plain message with jane@example.com")
    logger.info("%s and %s", "only one")
    written = app_log.getvalue()
    assert "plain message with [EMAIL]" in written
    assert "only one" in written


def test_the_drainers_dead_letter_line_keeps_its_stream_id_and_masks_a_card(app_log):
    logging.getLogger("billing.ledger.stream").error(
        "ledger entry %s cannot be written (%s); moved to %s", b"1733350000005-0", "card 4111111111111111", "dead"
    )
    written = app_log.getvalue()
    assert "ledger entry b'1733350000005-0' cannot be written (card [CARD])" in written
