"""Prometheus metrics for the gateway, scraped at /metrics.

`record_request_metrics` runs on the hot path once per request: it only updates in-process counters
(no I/O, no database, no lock beyond prometheus_client's own).

Labels are `tenant` (the tenant id) and `model`. `model` is the served model, a name from the catalog (the gateway
sets it only from the catalog entry that served the request), or "unknown" when no model served it (an unknown model
name, a refusal before routing): a client's made-up model names never become label values, so the series count is
bounded by the catalog. `tenant` is capped at a fixed number of distinct values per process; later ones are folded
into "other".

The page shows every tenant's traffic and cost: scrapers send `Authorization: Bearer <LLMOPS_METRICS_TOKEN>`
(compared in constant time); without a configured token it answers 401 to everyone, unless LLMOPS_METRICS_PUBLIC
opens it.

Several worker processes (uvicorn --workers N, gunicorn): each process counts on its own, so set
PROMETHEUS_MULTIPROC_DIR to an empty directory shared by the workers, writable, and wiped at deploy;
prometheus_client then writes each process's values there and this view aggregates them with
MultiProcessCollector. Gauges are not used, so no multiprocess_mode choices are needed.
"""

import hmac
import os
import threading

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from billing.ledger.events import UsageEvent
from billing.models import UsageKind

OTHER_LABEL = "other"
UNKNOWN_MODEL_LABEL = "unknown"
MAX_TENANT_LABELS = 200
CACHE_HIT_STATUSES = frozenset({"hit-exact", "hit-semantic"})
BUDGET_REJECTION_CODE = "budget_exceeded"
LATENCY_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class BoundedLabel:
    """Hands out at most `limit` distinct label values; any value beyond them becomes "other"."""

    def __init__(self, limit: int):
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER_LABEL


tenant_label = BoundedLabel(MAX_TENANT_LABELS)
LABELS = ("tenant", "model")

REQUESTS = Counter("llmops_requests", "Requests answered by the gateway.", [*LABELS, "status_class"])
PROMPT_TOKENS = Counter("llmops_prompt_tokens", "Prompt tokens, as billed.", LABELS)
COMPLETION_TOKENS = Counter("llmops_completion_tokens", "Completion tokens, as billed.", LABELS)
COST = Counter("llmops_cost_usd", "Cost charged to tenants, USD (float: for graphs, not billing).", LABELS)
CACHE_HITS = Counter("llmops_cache_hits", "Requests answered from the response cache.", LABELS)
ROUTED_TO_LARGE = Counter("llmops_routed_to_large", "Requests the router sent to the tenant's large model.", LABELS)
UPSTREAM_ERRORS = Counter("llmops_upstream_errors", "Requests that failed upstream (HTTP 5xx to the client).", LABELS)
BUDGET_REJECTIONS = Counter("llmops_budget_rejections", "Requests refused because a budget was spent.", LABELS)
SHADOW_SAMPLES_SKIPPED = Counter(
    "llmops_shadow_samples_skipped", "Shadow-evaluation samples dropped on the request path, by reason.", ["reason"]
)
LATENCY = Histogram(
    "llmops_request_latency_seconds",
    "Total request latency seen by the client.",
    LABELS,
    buckets=LATENCY_BUCKETS_SECONDS,
)
UPSTREAM_LATENCY = Histogram(
    "llmops_upstream_latency_seconds", "Latency of the upstream call.", LABELS, buckets=LATENCY_BUCKETS_SECONDS
)


class _Series:
    """The children of the per-request metrics for one tenant and model label, each looked up on its first use and
    kept: prometheus_client's ``labels()`` builds and checks its key on every call, and a request made eight. A
    child is still made only when it first counts something, so no series appears before it has a value."""

    __slots__ = ("children", "labels")

    def __init__(self, labels: tuple[str, str]):
        self.labels = labels
        self.children: dict[tuple, object] = {}

    def of(self, metric, *more_labels: str):
        key = (metric, *more_labels)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = metric.labels(*self.labels, *more_labels)
        return child


# Bounded as the labels are: MAX_TENANT_LABELS tenants (and "other") times the catalog's models.
_series: dict[tuple[str, str], _Series] = {}


def _series_of(tenant_id: int, served_model: str) -> _Series:
    labels = (tenant_label(str(tenant_id)), served_model or UNKNOWN_MODEL_LABEL)
    series = _series.get(labels)
    if series is None:
        series = _series[labels] = _Series(labels)
    return series


def record_request_metrics(event: UsageEvent) -> None:
    series = _series_of(event.tenant_id, event.served_model)
    if event.prompt_tokens:
        series.of(PROMPT_TOKENS).inc(event.prompt_tokens)
    if event.completion_tokens:
        series.of(COMPLETION_TOKENS).inc(event.completion_tokens)
    if event.cost_usd:
        series.of(COST).inc(float(event.cost_usd))
    if event.upstream_latency_ms is not None:
        series.of(UPSTREAM_LATENCY).observe(event.upstream_latency_ms / 1000)
    if event.kind != UsageKind.REQUEST:
        # A call made for a request (a compression summary): its tokens and cost count, it is no request of its own.
        return
    series.of(REQUESTS, f"{event.http_status // 100}xx").inc()
    if event.cache_status in CACHE_HIT_STATUSES:
        series.of(CACHE_HITS).inc()
    if event.routed_to_large:
        series.of(ROUTED_TO_LARGE).inc()
    if event.http_status >= 500:
        series.of(UPSTREAM_ERRORS).inc()
    if event.error_code == BUDGET_REJECTION_CODE:
        series.of(BUDGET_REJECTIONS).inc()
    series.of(LATENCY).observe(event.total_latency_ms / 1000)


def _registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _scraper_authorized(request: HttpRequest) -> bool:
    token = settings.LLMOPS_METRICS_TOKEN
    # Compared as bytes: compare_digest refuses str with non-ASCII characters, which a client may send.
    sent = request.headers.get("Authorization", "").encode()
    return bool(token) and hmac.compare_digest(sent, f"Bearer {token}".encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not settings.LLMOPS_METRICS_PUBLIC and not _scraper_authorized(request):
        error = {
            "code": "metrics_token_required",
            "message": "Send Authorization: Bearer <LLMOPS_METRICS_TOKEN>. Without that setting /metrics is closed "
            "unless LLMOPS_METRICS_PUBLIC=true.",
        }
        response = JsonResponse({"error": error}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
