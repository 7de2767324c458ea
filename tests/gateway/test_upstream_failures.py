"""An upstream that fails, stalls or cannot be reached becomes a clear 502/504 and a ledger row."""

from decimal import Decimal

import httpx
import openai
import pytest

from billing.models import UsageRecord
from tests.factories import ModelFactory, ProviderFactory
from tests.servers import free_port


def allow(setup, model):
    setup.tenant.model_access.allowed_models.add(model)


@pytest.fixture
def failing_model(acme, mock_upstream):
    def make(upstream_name, *, base_url=None, timeout=Decimal("5")):
        provider = ProviderFactory(base_url=base_url or f"{mock_upstream.url}/v1", timeout_seconds=timeout)
        model = ModelFactory(name=upstream_name, provider=provider, upstream_name=upstream_name)
        allow(acme, model)
        return model

    return make


def test_upstream_5xx_is_a_502(openai_client, failing_model):
    model = failing_model("mock-fail-503")

    with pytest.raises(openai.InternalServerError) as excinfo:
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.status_code == 502
    assert "503" in excinfo.value.message
    record = UsageRecord.objects.get()
    assert (record.http_status, record.error_code, record.served_model) == (502, "upstream_error", model.name)
    assert record.upstream_latency_ms is not None and record.cost_usd == 0


def test_upstream_429_is_a_429(openai_client, failing_model):
    model = failing_model("mock-fail-429")

    with pytest.raises(openai.RateLimitError):
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert UsageRecord.objects.get().error_code == "upstream_rate_limited"


def test_upstream_connection_error_is_a_502(openai_client, failing_model):
    model = failing_model("mock-small", base_url=f"http://127.0.0.1:{free_port()}/v1")

    with pytest.raises(openai.InternalServerError) as excinfo:
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.status_code == 502
    assert UsageRecord.objects.get().error_code == "upstream_connection_error"


def test_upstream_timeout_is_a_504(openai_client, failing_model):
    model = failing_model("mock-stall", timeout=Decimal("0.5"))

    with pytest.raises(openai.InternalServerError) as excinfo:
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.status_code == 504
    record = UsageRecord.objects.get()
    assert record.error_code == "upstream_timeout" and record.upstream_latency_ms >= 450


def test_stream_cut_short_is_an_error_event_and_an_error_row(openai_client, failing_model):
    model = failing_model("mock-break")

    with pytest.raises(openai.APIError) as excinfo:
        list(
            openai_client.chat.completions.create(
                model=model.name, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )

    assert "before [DONE]" in excinfo.value.message
    record = UsageRecord.objects.get()
    assert (record.http_status, record.error_code) == (502, "upstream_stream_truncated")
    assert record.completion_tokens > 0 and record.usage_estimated and record.cost_usd > 0


def test_missing_usage_is_estimated_with_tiktoken(openai_client, failing_model):
    model = failing_model("mock-no-usage")

    completion = openai_client.chat.completions.create(
        model=model.name, messages=[{"role": "user", "content": "Count my tokens please"}]
    )

    assert completion.usage is None
    record = UsageRecord.objects.get()
    assert record.usage_estimated and record.prompt_tokens > 0 and record.completion_tokens > 0


def test_client_disconnect_mid_stream_charges_what_was_generated(gateway, acme, failing_model):
    model = failing_model("mock-slow-stream")
    body = {"model": model.name, "messages": [{"role": "user", "content": "a long answer"}], "stream": True}

    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {acme.key}"}
    ) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
    assert received[0].startswith("data: ")

    record = wait_for_record()
    assert (record.http_status, record.error_code) == (499, "client_disconnected")
    assert 0 < record.completion_tokens < 24 and record.usage_estimated


def wait_for_record(timeout: float = 10.0) -> UsageRecord:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = UsageRecord.objects.first()
        if record is not None:
            return record
        time.sleep(0.05)
    raise AssertionError("no ledger row was written")
