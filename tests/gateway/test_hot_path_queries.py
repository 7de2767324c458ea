"""On a warm process the request path reads its configuration from memory: no query per request.

With Redis the per-request freshness check is one MGET of the configuration versions, not SQL."""

import threading
from decimal import Decimal

import httpx
import pytest
from django.db.backends.utils import CursorWrapper

from billing.budgets.reservations import SETTLE_SCRIPT
from billing.budgets.services import budget_create
from billing.ratelimits import rate_limit_create
from core import redis as core_redis
from routing import resilience
from routing.models import ModelKind
from routing.services import routing_policy_ensure_default, tenant_model_access_set
from tests.factories import ModelFactory


@pytest.fixture
def queries(monkeypatch):
    """Every SQL statement run on any thread but the ledger drainer's (it writes the rows, off the request path)."""
    seen: list[str] = []
    execute = CursorWrapper._execute_with_wrappers

    def counting(self, sql, *args, **kwargs):
        if threading.current_thread().name != "ledger-drainer":
            seen.append(sql)
        return execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counting)
    return seen


def test_a_warm_process_answers_with_no_configuration_query(gateway, acme, queries):
    """Every feature in scope: a live policy routing `auto`, a budget, a rate limit, key auth, the ledger."""
    routing_policy_ensure_default(tenant=acme.tenant)
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("10"))
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, requests_per_minute=1000)
    headers = {"authorization": f"Bearer {acme.key}", "x-llmops-cache": "bypass, no-store"}
    body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi"}]}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200  # loads the tenant's configuration
        queries.clear()
        responses = [client.post("/v1/chat/completions", json=body) for _ in range(20)]

    assert [response.status_code for response in responses] == [200] * 20
    assert all("rule=" in response.headers["x-llmops-route"] for response in responses)
    assert all(response.headers["x-llmops-budget-remaining-usd"] for response in responses)
    assert all(response.headers["x-ratelimit-limit-requests"] == "1000" for response in responses)
    assert queries == []


def test_a_chat_completion_goes_to_redis_in_three_writes(gateway, acme, monkeypatch, settings):
    """The configuration's versions, the admission, and the settle, which carries the ledger record and the release of
    the request's slot for requests in flight: each write wakes Redis, the dearest part of a round trip on a
    virtual machine (docs/performance.md), so the release does not go in a write of its own after the answer."""
    settings.LLMOPS_TENANT_MAX_INFLIGHT = 8
    # The breaker asks Redis again once its clean verdict is CLEAN_VERDICT_SECONDS old, which five requests on a
    # loaded machine can outlast; the verdict is trusted for the whole test so that only the request's writes count.
    monkeypatch.setattr(resilience, "CLEAN_VERDICT_SECONDS", 600.0)
    monkeypatch.setattr(resilience, "_clean_until", {})
    routing_policy_ensure_default(tenant=acme.tenant)
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("10"))
    writes: list[list[str]] = []
    send = core_redis._Pipe.send

    def recording(self, batch):
        writes.append([" ".join(str(word) for word in args[:2]) for args, _ in batch])
        return send(self, batch)

    headers = {"authorization": f"Bearer {acme.key}", "x-llmops-cache": "bypass, no-store"}
    body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi"}]}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200  # loads the tenant's configuration
        monkeypatch.setattr(core_redis._Pipe, "send", recording)
        statuses = [client.post("/v1/chat/completions", json=body).status_code for _ in range(5)]
    monkeypatch.undo()

    assert statuses == [200] * 5
    releases = [commands for commands in writes if any(command.startswith("ZREM") for command in commands)]
    assert len(releases) == 5
    assert all(f"EVALSHA {SETTLE_SCRIPT.sha}" in commands for commands in releases)
    assert len(writes) == 3 * 5


def test_embeddings_and_responses_answer_with_no_configuration_query(gateway, acme, queries):
    """The other /v1 pipelines read the same snapshot: routing, a budget, a rate limit, key auth, the ledger."""
    embedder = ModelFactory(
        name="acme-embed",
        kind=ModelKind.EMBEDDING,
        provider=acme.small.provider,
        upstream_name="text-embedding-3-small",
    )
    tenant_model_access_set(
        tenant=acme.tenant, allowed_models=[acme.small, acme.large, embedder], default_model=acme.small
    )
    routing_policy_ensure_default(tenant=acme.tenant)
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("10"))
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, requests_per_minute=1000)
    headers = {"authorization": f"Bearer {acme.key}", "x-llmops-cache": "bypass, no-store"}
    embeddings = {"model": embedder.name, "input": ["Say hi", "Say bye"]}
    responses = {"model": "auto", "max_output_tokens": 16, "input": "Say hi"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
        assert client.post("/v1/embeddings", json=embeddings).status_code == 200  # loads the tenant's configuration
        queries.clear()
        answers = [client.post("/v1/embeddings", json=embeddings) for _ in range(10)]
        answers += [client.post("/v1/responses", json=responses) for _ in range(10)]
        answers.append(client.post("/v1/responses", json={**responses, "stream": True}))

    assert [answer.status_code for answer in answers] == [200] * 21
    assert all("rule=" in answer.headers["x-llmops-route"] for answer in answers)
    assert all(answer.headers["x-llmops-budget-remaining-usd"] for answer in answers)
    assert all(answer.headers["x-ratelimit-limit-requests"] == "1000" for answer in answers)
    assert queries == []


def test_the_messages_api_answers_with_no_configuration_query(gateway, acme, queries):
    """/v1/messages, keyed by x-api-key, plain and streamed, through the same snapshot."""
    routing_policy_ensure_default(tenant=acme.tenant)
    budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("10"))
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, requests_per_minute=1000)
    headers = {"x-api-key": acme.key, "anthropic-version": "2023-06-01", "x-llmops-cache": "bypass, no-store"}
    body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi"}]}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
        assert client.post("/v1/messages", json=body).status_code == 200  # loads the tenant's configuration
        queries.clear()
        responses = [client.post("/v1/messages", json={**body, "stream": index % 2 == 1}) for index in range(20)]
        counted = client.post("/v1/messages/count_tokens", json={"model": "auto", "messages": body["messages"]})

    assert [response.status_code for response in responses] == [200] * 20
    assert [
        response.text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n') for response in responses
    ] == [index % 2 == 1 for index in range(20)]
    assert all("rule=" in response.headers["x-llmops-route"] for response in responses)
    assert all(response.headers["x-llmops-budget-remaining-usd"] for response in responses)
    assert all(response.headers["x-ratelimit-limit-requests"] == "1000" for response in responses)
    assert counted.json()["input_tokens"] > 0
    assert queries == []
