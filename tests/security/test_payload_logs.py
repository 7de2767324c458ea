import logging
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from tenants.models import PayloadLog
from tenants.payload_logs import payload_log_policies_forget, payload_log_record, payload_logs_purge
from tenants.services import payload_log_settings_set
from tests.factories import TenantFactory

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "I am jane@example.com, card 4111 1111 1111 1111, ticket PROJ-1234"}],
}
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Use key sk-abcdefghijklmnopqrstuvwxyz012345"}}]}


def _record(tenant, request_id="req_1"):
    return payload_log_record(tenant_id=tenant.pk, request_id=request_id, request_body=BODY, response_body=ANSWER)


@pytest.mark.django_db
def test_nothing_is_stored_by_default():
    tenant = TenantFactory()
    assert _record(tenant) is None
    assert not PayloadLog.objects.unscoped().exists()


@pytest.mark.django_db
def test_when_on_the_request_and_answer_are_stored_redacted_with_the_tenants_patterns():
    tenant = TenantFactory()
    payload_log_settings_set(tenant=tenant, enabled=True, retention_days=3, custom_patterns=r"PROJ-\d+")
    row = _record(tenant)
    assert row.request["messages"][0]["content"] == "I am [EMAIL], card [CARD], ticket [REDACTED]"
    assert row.response["choices"][0]["message"]["content"] == "Use key [API_KEY]"
    stored = PayloadLog.objects.unscoped().get()
    assert "jane@example.com" not in str(stored.request) and "sk-abc" not in str(stored.response)


@pytest.mark.django_db
def test_turning_logging_off_stops_storing_once_the_process_rereads_the_settings():
    tenant = TenantFactory()
    payload_log_settings_set(tenant=tenant, enabled=True)
    assert _record(tenant, "req_a") is not None
    payload_log_settings_set(tenant=tenant, enabled=False)
    payload_log_policies_forget()
    assert _record(tenant, "req_b") is None


@pytest.mark.django_db
def test_invalid_patterns_and_retention_are_refused():
    tenant = TenantFactory()
    with pytest.raises(ValidationError):
        payload_log_settings_set(tenant=tenant, enabled=True, custom_patterns="(unclosed")
    with pytest.raises(ValidationError):
        payload_log_settings_set(tenant=tenant, enabled=True, retention_days=0)


@pytest.mark.django_db
def test_a_tenant_pattern_that_backtracks_without_end_gives_up_and_stores_the_payload_as_the_placeholder(caplog):
    tenant = TenantFactory()
    # Seconds of backtracking on the prompt below, in Python's re and in the regex module alike, without a timeout.
    payload_log_settings_set(tenant=tenant, enabled=True, custom_patterns="PROJ-\\d+\n^(a|a)+$")
    prompt = "a" * 25 + "!"
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}

    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="tenants.payload_logs"):
        row = payload_log_record(tenant_id=tenant.pk, request_id="req_x", request_body=body, response_body=ANSWER)
    elapsed = time.perf_counter() - started

    assert elapsed < 1, f"payload logging took {elapsed:.2f}s"
    assert (row.request, row.response) == ("[REDACTED]", "[REDACTED]")
    (warning,) = caplog.records
    assert f"tenant {tenant.pk}" in warning.getMessage() and "req_x" in warning.getMessage()
    assert prompt not in warning.getMessage()
    # The same patterns redact a payload they finish on.
    assert _record(tenant, "req_y").request["messages"][0]["content"].endswith("ticket [REDACTED]")


@pytest.mark.django_db
def test_purge_keeps_rows_within_each_tenants_retention():
    now = timezone.now()
    short, long_, unset = TenantFactory(), TenantFactory(), TenantFactory()
    payload_log_settings_set(tenant=short, enabled=True, retention_days=1)
    payload_log_settings_set(tenant=long_, enabled=True, retention_days=30)
    for tenant in (short, long_, unset):
        PayloadLog.objects.create(tenant=tenant, request_id="old", request={}, created_at=now - timedelta(days=2))
        PayloadLog.objects.create(tenant=tenant, request_id="new", request={}, created_at=now - timedelta(hours=1))
    assert payload_logs_purge(now=now) == 3
    left = sorted(PayloadLog.objects.unscoped().values_list("tenant__slug", "request_id"))
    assert left == sorted([(short.slug, "new"), (long_.slug, "new"), (long_.slug, "old")])
