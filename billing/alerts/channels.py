"""Sending one alert payload to one channel. Each sender raises ChannelSendError when the channel did not take it.

Signed webhooks are signed as Standard Webhooks (core.webhooks) under the channel's signing secret; their
``webhook-id`` names the delivery, so its retries share it.
"""

from urllib.parse import urlsplit

import boto3
import httpx
import orjson
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.mail import send_mail

from billing.models import CREDENTIAL_TARGET_KINDS, AlertChannel, ChannelKind
from core.crypto import CredentialDecryptionError, decrypt_secret
from core.outbound import OutboundRefused, outbound_post
from core.redaction import API_KEY
from core.webhooks import webhook_headers

SEND_TIMEOUT_SECONDS = 10  # each connect, write and read
SEND_DEADLINE_SECONDS = 15  # the whole send, however slowly the endpoint answers
SNS_ARN_PARTS = 6  # arn:aws:sns:<region>:<account>:<topic>


def target_masked(channel: AlertChannel) -> str:
    """The target as a member who may not edit the channel sees it: a credential's path masked whole, with the log
    filter's placeholder (its Slack rule knows only hooks.slack.com's URLs, not another host's), its host kept."""
    if channel.kind not in CREDENTIAL_TARGET_KINDS:
        return channel.target
    parts = urlsplit(channel.target)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/{API_KEY}"


def without_credential(channel: AlertChannel, text: str) -> str:
    """``text`` (a failed send's error, kept on the delivery for every member to read) with the channel's target
    masked where the target is a credential."""
    if channel.kind not in CREDENTIAL_TARGET_KINDS or not channel.target:
        return text
    return text.replace(channel.target, target_masked(channel))


class ChannelSendError(Exception):
    pass


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def sns_region(topic_arn: str) -> str | None:
    parts = topic_arn.split(":")
    if len(parts) != SNS_ARN_PARTS or parts[0] != "arn" or parts[2] != "sns" or not parts[3] or not parts[5]:
        return None
    return parts[3]


def sns_topic_error(topic_arn: str) -> str | None:
    """Why alerts may not publish to `topic_arn`; None for a topic ARN of an account in
    LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS. The platform's AWS credentials may reach topics that are no tenant's."""
    if sns_region(topic_arn) is None:
        return "Enter an SNS topic ARN: arn:aws:sns:<region>:<account>:<topic>."
    allowed = {account.strip() for account in settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS if account.strip()}
    if not allowed:
        return "SNS channels are off: LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS names no AWS account whose topics they may use."
    account = topic_arn.split(":")[4]
    if account not in allowed:
        return f"Topics of AWS account {account or '(none)'} are not allowed (LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS)."
    return None


def channel_send(*, channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    """``message_id`` is the same for every attempt of one delivery (a signed webhook's ``webhook-id``)."""
    senders = {
        ChannelKind.EMAIL: _send_email,
        ChannelKind.SLACK: _send_slack,
        ChannelKind.WEBHOOK: _send_webhook,
        ChannelKind.SNS: _send_sns,
    }
    senders[channel.kind](channel, message_id, subject, text, payload)


def _send_email(channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    try:
        send_mail(subject, text, settings.DEFAULT_FROM_EMAIL, [channel.target])
    except Exception as exc:  # SMTP and backend errors have no common base class
        raise ChannelSendError(f"email to {channel.target} failed: {exc}") from exc


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    if not is_http_url(url):
        raise ChannelSendError("the webhook URL must be http or https")
    try:
        response = outbound_post(
            url,
            content=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=SEND_TIMEOUT_SECONDS,
            deadline=SEND_DEADLINE_SECONDS,
        )
    except OutboundRefused as exc:
        raise ChannelSendError(f"POST {url} refused: {exc}") from exc
    except httpx.HTTPError as exc:
        raise ChannelSendError(f"POST {url} failed: {exc!r}") from exc
    if response.status_code >= 300:
        raise ChannelSendError(f"POST {url} answered {response.status_code}: {response.text[:300]}")


def _send_slack(channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    _post(channel.target, orjson.dumps({"text": f"*{subject}*\n{text}"}), {})


def _send_webhook(channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    try:
        secret = decrypt_secret(channel.signing_secret_encrypted) if channel.signing_secret_encrypted else ""
    except CredentialDecryptionError as exc:
        raise ChannelSendError("the webhook signing secret cannot be decrypted with the configured keys") from exc
    if not secret:
        raise ChannelSendError("the webhook channel has no signing secret")
    body = orjson.dumps(payload)
    _post(channel.target, body, webhook_headers(secret=secret, message_id=message_id, body=body))


def _send_sns(channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    # Checked again: the allowed accounts may have changed since the channel was saved.
    if refused := sns_topic_error(channel.target):
        raise ChannelSendError(f"SNS topic {channel.target} refused: {refused}")
    try:
        boto3.client("sns", region_name=sns_region(channel.target)).publish(
            TopicArn=channel.target, Subject=subject[:100], Message=orjson.dumps(payload).decode()
        )
    except (BotoCoreError, ClientError) as exc:
        raise ChannelSendError(f"SNS publish to {channel.target} failed: {exc}") from exc
