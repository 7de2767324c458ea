from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.ledger.events import UsageEvent
from billing.models import UsageKind
from llmops import metrics
from llmops.metrics import record_request_metrics


def event(**overrides) -> UsageEvent:
    fields = {
        "request_id": "req-metrics",
        "tenant_id": 4242,
        "team_id": 1,
        "api_key_id": 1,
        "created_at": datetime(2025, 3, 3, tzinfo=UTC),
        "http_status": 200,
        "served_model": "metrics-small",
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "cost_usd": Decimal("0.0000123"),
        "total_latency_ms": 180,
        "upstream_latency_ms": 150,
    }
    return UsageEvent(**{**fields, **overrides})


@pytest.fixture(autouse=True)
def public_metrics(settings):
    """These tests read the counters; who may read them is tests/security/test_metrics_exposure.py's concern."""
    settings.LLMOPS_METRICS_PUBLIC = True


@pytest.fixture(autouse=True)
def room_for_these_tenants(monkeypatch):
    """A fresh allowance of tenant labels: earlier tests of the same process (each with tenants of its own) may
    have used all MAX_TENANT_LABELS, which would count these tests' tenants as "other"."""
    monkeypatch.setattr(metrics, "tenant_label", metrics.BoundedLabel(metrics.MAX_TENANT_LABELS))


def sample(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(part in line for part in wanted.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_endpoint_exposes_request_counters_and_histograms(client):
    before = client.get("/metrics").content.decode()
    record_request_metrics(event(routed_to_large=True))
    record_request_metrics(event(cache_status="hit-exact", cost_usd=Decimal(0)))
    record_request_metrics(event(http_status=502, error_code="upstream_error"))
    record_request_metrics(event(http_status=429, error_code="budget_exceeded"))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    labels = {"tenant": "4242", "model": "metrics-small"}

    def delta(name, **extra):
        return sample(text, name, **labels, **extra) - sample(before, name, **labels, **extra)

    assert delta("llmops_requests_total", status_class="2xx") == 2
    assert delta("llmops_requests_total", status_class="5xx") == 1
    assert delta("llmops_prompt_tokens_total") == 44
    assert delta("llmops_cache_hits_total") == 1
    assert delta("llmops_routed_to_large_total") == 1
    assert delta("llmops_upstream_errors_total") == 1
    assert delta("llmops_budget_rejections_total") == 1
    assert delta("llmops_request_latency_seconds_bucket", le="0.25") == 4
    assert delta("llmops_cost_usd_total") > 0


def test_a_compression_summary_counts_its_tokens_and_cost_but_is_no_request(client):
    labels = {"tenant": "4243", "model": "metrics-small"}
    before = client.get("/metrics").content.decode()
    record_request_metrics(event(tenant_id=4243, kind=UsageKind.COMPRESSION_SUMMARY, parent_request_id="req-parent"))
    text = client.get("/metrics").content.decode()

    def delta(name, **extra):
        return sample(text, name, **labels, **extra) - sample(before, name, **labels, **extra)

    assert delta("llmops_requests_total", status_class="2xx") == 0
    assert delta("llmops_request_latency_seconds_bucket", le="0.25") == 0
    assert delta("llmops_prompt_tokens_total") == 11
    assert delta("llmops_cost_usd_total") > 0


def test_a_request_no_model_served_counts_under_unknown_whatever_model_it_named(client):
    labels = {"tenant": "4244", "model": "unknown"}
    before = client.get("/metrics").content.decode()
    for index in range(3):
        record_request_metrics(event(tenant_id=4244, served_model="", requested_model=f"made-up-{index}"))
    text = client.get("/metrics").content.decode()

    assert sample(text, "llmops_requests_total", **labels) - sample(before, "llmops_requests_total", **labels) == 3
    assert "made-up" not in text


def test_a_series_appears_only_once_it_has_counted_something(client):
    # A tenant id no sequence hands out, so no other test's requests share its series.
    refused = {"http_status": 401, "served_model": "", "prompt_tokens": 0, "completion_tokens": 0}
    record_request_metrics(event(tenant_id=-4250, cost_usd=Decimal(0), upstream_latency_ms=None, **refused))
    text = client.get("/metrics").content.decode()
    lines = [line for line in text.splitlines() if 'tenant="-4250"' in line and not line.startswith("#")]

    names = {line.split("{")[0] for line in lines}
    assert {name for name in names if not name.endswith("_created")} == {
        "llmops_requests_total",
        "llmops_request_latency_seconds_bucket",
        "llmops_request_latency_seconds_count",
        "llmops_request_latency_seconds_sum",
    }
