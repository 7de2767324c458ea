"""Payload logging: a tenant's prompts and answers, kept only when it turned logging on, and only redacted.

`payload_log_record` runs on the gateway's path once a request is answered, in a worker thread (it writes
to the database). Each process re-reads a tenant's settings at most every LLMOPS_PAYLOAD_LOG_SETTINGS_TTL_SECONDS.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import regex
from django.conf import settings
from django.db.models import Q

from core.redaction import CUSTOM, compile_custom_patterns, redact_value
from tenants.models import PayloadLog, PayloadLogSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PayloadLogPolicy:
    enabled: bool
    custom_patterns: tuple[regex.Pattern, ...]


DISABLED = PayloadLogPolicy(enabled=False, custom_patterns=())
_policies: dict[int, tuple[float, PayloadLogPolicy]] = {}


def payload_log_policy(*, tenant_id: int) -> PayloadLogPolicy:
    now = time.monotonic()
    cached = _policies.get(tenant_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    row = PayloadLogSettings.objects.for_tenant(tenant_id).first()
    policy = DISABLED
    if row is not None and row.enabled:
        policy = PayloadLogPolicy(
            enabled=True,
            custom_patterns=compile_custom_patterns(tuple(line for line in row.custom_patterns.splitlines() if line)),
        )
    _policies[tenant_id] = (now + settings.LLMOPS_PAYLOAD_LOG_SETTINGS_TTL_SECONDS, policy)
    return policy


def payload_log_policies_forget() -> None:
    """Drop what this process remembers, so the next request reads the settings again (tests, settings saves)."""
    _policies.clear()


def payload_log_record(*, tenant_id: int, request_id: str, request_body, response_body) -> PayloadLog | None:
    """Store the request and answer, redacted, when the tenant logs payloads; otherwise store nothing."""
    policy = payload_log_policy(tenant_id=tenant_id)
    if not policy.enabled:
        return None
    timeout_ms = settings.LLMOPS_PAYLOAD_LOG_PATTERN_TIMEOUT_MS
    redacting = {"custom_patterns": policy.custom_patterns, "pattern_timeout": timeout_ms / 1000}
    try:
        request = redact_value(request_body, **redacting)
        response = redact_value(response_body, **redacting)
    except TimeoutError:
        # What a pattern could not finish may hold what it hides: the row is kept, its payload only the placeholder.
        logger.warning(
            "payload log of request %s of tenant %s: a custom redaction pattern ran past %s ms; stored as %s",
            request_id,
            tenant_id,
            timeout_ms,
            CUSTOM,
        )
        request = response = CUSTOM
    return PayloadLog.objects.create(tenant_id=tenant_id, request_id=request_id, request=request, response=response)


def payload_logs_purge(*, now: datetime) -> int:
    """Delete rows older than their tenant's retention; a tenant with no settings row keeps none."""
    # Unscoped, reviewed: the periodic purge applies every tenant's own retention, and reads no payload.
    every_settings, every_log = PayloadLogSettings.objects.unscoped(), PayloadLog.objects.unscoped()
    expired = Q()
    for tenant_id, retention_days in every_settings.values_list("tenant_id", "retention_days"):
        expired |= Q(tenant_id=tenant_id, created_at__lt=now - timedelta(days=retention_days))
    with_settings = every_settings.values("tenant_id")
    deleted, _ = every_log.filter(expired | ~Q(tenant_id__in=with_settings)).delete()
    return deleted
