"""Sending one alert payload to one channel. Each sender raises ChannelSendError when the channel did not take it.

Signed webhooks are signed as Standard Webhooks (core.webhooks) under the channel's signing secret; their
``webhook-id`` names the delivery, so its retries share it.
"""

import logging
import unicodedata
from urllib.parse import urlsplit

import boto3
import httpx
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.mail import send_mail

from billing.models import CREDENTIAL_TARGET_KINDS, AlertChannel, ChannelKind
from core.crypto import CredentialDecryptionError, decrypt_secret
from core.outbound import OutboundRefused, outbound_post
from core.redaction import API_KEY
from core.webhooks import webhook_headers
from tenants.models import Tenant

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 10  # each connect, write and read
SEND_DEADLINE_SECONDS = 15  # the whole send, however slowly the endpoint answers
SNS_ARN_PARTS = 6  # arn:aws:sns:<region>:<account>:<topic>
SNS_SUBJECT_MAX_CHARS = 100
# A tenant's topics are named for it: the allowed accounts also hold other tenants' topics and the platform's own.
SNS_TOPIC_PREFIX = "llmops-{tenant_slug}-"
# Three tries of at most 15 s each end inside the send task's soft time limit (60 s); botocore's defaults (60 s
# connect and read, 5 tries) do not.
SNS_CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})


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


def sns_topic_prefix(tenant: Tenant) -> str:
    return SNS_TOPIC_PREFIX.format(tenant_slug=tenant.slug)


def sns_topic_error(topic_arn: str, *, tenant: Tenant) -> str | None:
    """Why `tenant`'s alerts may not publish to `topic_arn`; None for a topic of an account in
    LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS named for the tenant. The platform's AWS credentials reach every topic of those
    accounts, the platform's own and other tenants' too."""
    if sns_region(topic_arn) is None:
        return "Enter an SNS topic ARN: arn:aws:sns:<region>:<account>:<topic>."
    allowed = {account.strip() for account in settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS if account.strip()}
    if not allowed:
        return "SNS channels are off: LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS names no AWS account whose topics they may use."
    _, _, _, _, account, topic = topic_arn.split(":")
    if account not in allowed:
        return f"Topics of AWS account {account or '(none)'} are not allowed (LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS)."
    prefix = sns_topic_prefix(tenant)
    if not topic.startswith(prefix) or topic == prefix:
        return f"Topic {topic} is not named for tenant {tenant.slug}: its alert topics are named {prefix}<name>."
    if _topic_of_a_longer_slug(topic, tenant):
        return f"Topic {topic} is named for another tenant: choose another name after {prefix}."
    return None


def _topic_of_a_longer_slug(topic: str, tenant: Tenant) -> bool:
    """Slugs may hold hyphens: llmops-acme-corp-alerts starts with acme's prefix, but is acme-corp's topic."""
    rest = topic.removeprefix(sns_topic_prefix(tenant))
    longer_slugs = [f"{tenant.slug}-{rest[:end]}" for end, char in enumerate(rest) if char == "-"]
    # Unscoped, reviewed: answers only whether another tenant's prefix claims the topic, as tenant_create asks a slug.
    return bool(longer_slugs) and Tenant.objects.unscoped().filter(slug__in=longer_slugs).exists()


def channel_send(*, channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    """``message_id`` is the same for every attempt of one delivery (a signed webhook's ``webhook-id``)."""
    senders = {
        ChannelKind.EMAIL: _send_email,
        ChannelKind.SLACK: _send_slack,
        ChannelKind.WEBHOOK: _send_webhook,
        ChannelKind.SNS: _send_sns,
    }
    try:
        senders[channel.kind](channel, message_id, subject, text, payload)
    except SoftTimeLimitExceeded as exc:
        # A failed attempt like any other, so it is recorded and retried: escaping, it would leave the delivery
        # pending with no attempt, for the sweep to queue again and again.
        raise ChannelSendError(f"the send to {channel.target} outlasted the send task's time limit") from exc


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


def slack_escaped(text: str) -> str:
    """Text as Slack shows it as written: it reads ``<...>`` as a mention (``<!channel>``), a link under any label or
    a command, and ``&`` as the start of one of those three escapes. An alert's text holds ids of anyone's choosing
    (a request's customer)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _send_slack(channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    _post(channel.target, orjson.dumps({"text": f"*{slack_escaped(subject)}*\n{slack_escaped(text)}"}), {})


def _send_webhook(channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    try:
        secret = decrypt_secret(channel.signing_secret_encrypted) if channel.signing_secret_encrypted else ""
    except CredentialDecryptionError as exc:
        raise ChannelSendError("the webhook signing secret cannot be decrypted with the configured keys") from exc
    if not secret:
        raise ChannelSendError("the webhook channel has no signing secret")
    body = orjson.dumps(payload)
    _post(channel.target, body, webhook_headers(secret=secret, message_id=message_id, body=body))


def _sns_client(region: str):
    client = boto3.client("sns", region_name=region, config=SNS_CLIENT_CONFIG)
    # botocore takes any error raised in a request, the task's SoftTimeLimitExceeded too, for a network error and
    # tries again: raised as it is, it ends the send at the soft time limit rather than the hard one.
    client.meta.events.register_first("needs-retry.sns", _raise_the_soft_time_limit)
    return client


def _raise_the_soft_time_limit(caught_exception: Exception | None = None, **kwargs) -> None:
    error = caught_exception.kwargs.get("error") if isinstance(caught_exception, HTTPClientError) else None
    if isinstance(error, SoftTimeLimitExceeded):
        raise error


# The SNS channels refused at send, each warned of once per process.
_sns_refusals_warned: set[int] = set()


def sns_subject(subject: str) -> str:
    """The subject as SNS takes it: printable ASCII, no line breaks, at most 100 characters and not starting with a
    space. SNS refuses any other Subject (InvalidParameter), failing the whole publish, and an alert's subject holds
    names of anyone's choosing (a request's customer, any Unicode). Letters lose their accents (``ë`` is ``e``), any
    other character that is not ASCII reads ``?``, line breaks and other white space read as a space and control and
    format characters are dropped; the message keeps the full text."""
    kept = []
    for char in unicodedata.normalize("NFKD", subject):
        if char.isspace():
            kept.append(" ")
        elif unicodedata.category(char) in {"Cc", "Cf", "Mn"}:  # controls, invisible formats, folded-off accents
            continue
        else:
            kept.append(char if char.isascii() and char.isprintable() else "?")
    return "".join(kept).lstrip()[:SNS_SUBJECT_MAX_CHARS].rstrip()


def _send_sns(channel: AlertChannel, message_id: str, subject: str, text: str, payload: dict) -> None:
    # Checked again: the allowed accounts may have changed since the channel was saved, and channels saved before
    # topics had to be named for their tenant were never checked for it.
    if refused := sns_topic_error(channel.target, tenant=channel.tenant):
        if channel.pk not in _sns_refusals_warned:
            _sns_refusals_warned.add(channel.pk)
            logger.warning("SNS alert channel %s (id %s) publishes nothing: %s", channel, channel.pk, refused)
        raise ChannelSendError(f"SNS topic {channel.target} refused: {refused}")
    try:
        _sns_client(sns_region(channel.target)).publish(
            TopicArn=channel.target, Subject=sns_subject(subject), Message=orjson.dumps(payload).decode()
        )
    except (BotoCoreError, ClientError) as exc:
        raise ChannelSendError(f"SNS publish to {channel.target} failed: {exc}") from exc
