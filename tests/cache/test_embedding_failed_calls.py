"""The semantic cache's paid /embeddings call (HttpEmbedder, against the mock upstream over loopback HTTP) that fails:
when the provider may bill it (it had the request when the wait for the answer timed out, or it answered something
unreadable), each request whose text was in it is charged its share, at the gateway's count, on a `cache_embedding`
row with the failure's status and error code; when it never reached the provider, or the provider refused it with an
error status, nobody is. Either way the lookup is a miss and the request is answered."""

from contextlib import ExitStack
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from billing.budgets.services import budget_counter_check, budget_counters_rebuild, budget_create
from billing.models import UsageKind, UsageRecord
from llmops.gateway.chat.cache_embeddings import cache_embeddings_flush
from routing.cache.embedders import configured_embedder
from tests.cache.conftest import cache_policy, chat
from tests.cache.embedders import chats_in_one_embedding_call, http_embedder_configured
from tests.cache.test_embedding_metering import FRANCE, JUPITER, embedding_tokens, embeddings_model_create, priced
from tests.servers import free_port

# Long enough for the mock's answers, short enough that a stalled one times out quickly (within the lookup's wait).
READ_TIMEOUT_SECONDS = 1.0
BILLABLE_FAILURES = [
    ("cache-embed-stall", 504, "upstream_timeout"),
    ("cache-embed-malformed-body-truncated", 502, "upstream_invalid_response"),
    ("cache-embed-malformed-body-array", 502, "upstream_invalid_response"),
    ("cache-embed-bad-encoding", 502, "upstream_invalid_response"),
]


@pytest.fixture
def embedder_at(settings):
    """``embedder_at(url, model)``: from then on, the process's embedder is HttpEmbedder calling ``url``'s
    /embeddings for ``model``, its reads timing out after READ_TIMEOUT_SECONDS."""
    with ExitStack() as configured:

        def configure(url: str, model: str) -> None:
            configured.enter_context(http_embedder_configured(settings, url=url, model=model))
            configured_embedder().client.timeout = httpx.Timeout(READ_TIMEOUT_SECONDS)

        yield configure


def embedding_rows(setup, ledger_drainer) -> list[UsageRecord]:
    """The setup's cache_embedding rows, once every text queued so far is embedded and charged."""
    assert cache_embeddings_flush(timeout=30)
    ledger_drainer.wait_drained()
    return list(UsageRecord.objects.for_tenant(setup.tenant).filter(kind=UsageKind.CACHE_EMBEDDING))


def embeddings_calls_since(mock_upstream, served_before: int, *, completions: int) -> int:
    return mock_upstream.app.requests_served - served_before - completions


@pytest.mark.parametrize(("model", "status", "error_code"), BILLABLE_FAILURES)
def test_a_failed_call_the_provider_had_is_charged_to_its_request_and_its_budgets(
    gateway, acme, mock_upstream, embedder_at, ledger_drainer, model, status, error_code
):
    embeddings_model = embeddings_model_create(mock_upstream, name=model)
    embedder_at(f"{mock_upstream.url}/v1", model)
    cache_policy(acme)
    budget = budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("5"))
    budget_counters_rebuild(budget=budget)
    served_before = mock_upstream.app.requests_served

    reply = chat(gateway, acme, FRANCE)

    # The lookup failed open.
    assert (reply.status_code, reply.headers["x-llmops-cache"]) == (200, "miss")
    rows = embedding_rows(acme, ledger_drainer)
    # The lookup's call, and the store's (the lookup left it no vector): each is charged.
    assert len(rows) == embeddings_calls_since(mock_upstream, served_before, completions=1) >= 1
    tokens = embedding_tokens(FRANCE, model=model)
    for row in rows:
        assert (row.parent_request_id, row.team_id, row.api_key_id) == (
            reply.headers["x-llmops-request-id"],
            acme.team.pk,
            acme.api_key.pk,
        )
        assert (row.served_model, row.http_status, row.error_code) == (model, status, error_code)
        assert (row.prompt_tokens, row.completion_tokens, row.usage_estimated) == (tokens, 0, True)
        assert row.cost_usd == priced(tokens) > 0
        assert row.price_version_id == embeddings_model.latest_price_version().pk
    check = budget_counter_check(budget=budget, now=timezone.now())
    charged = Decimal(reply.headers["x-llmops-cost-usd"]) + sum(row.cost_usd for row in rows)
    assert check.ledger_usd == check.counted_usd == charged


def test_two_tenants_texts_in_one_failed_call_are_each_charged_their_share(
    gateway, acme, globex, mock_upstream, embedder_at, ledger_drainer, settings
):
    model = "cache-embed-malformed-body-truncated"
    embeddings_model_create(mock_upstream, name=model)
    embedder_at(f"{mock_upstream.url}/v1", model)
    settings.LLMOPS_CACHE_EMBED_WAIT_SECONDS = 10
    asked = [(acme, FRANCE), (globex, JUPITER)]
    for setup, _ in asked:
        cache_policy(setup)

    # Both texts in one /embeddings call.
    replies = chats_in_one_embedding_call(gateway, asked, chat)

    assert [(reply.status_code, reply.headers["x-llmops-cache"]) for reply in replies] == [(200, "miss")] * 2
    for (setup, question), reply in zip(asked, replies, strict=True):
        # Each tenant is charged for its own text in every failed call it was in (its lookup's, shared, and its
        # store's), never for the other's.
        rows = embedding_rows(setup, ledger_drainer)
        assert rows
        tokens = embedding_tokens(question, model=model)
        assert {(row.parent_request_id, row.prompt_tokens, row.error_code) for row in rows} == {
            (reply.headers["x-llmops-request-id"], tokens, "upstream_invalid_response")
        }


def test_only_a_call_the_provider_may_bill_is_charged(gateway, acme, mock_upstream, embedder_at, ledger_drainer):
    """Refused with an error status, or never reached (connection refused): nothing. Then one it had: charged."""
    for model in ("cache-embed-fail-503", "cache-embed-stall"):
        embeddings_model_create(mock_upstream, name=model)
    cache_policy(acme)
    asked = [
        (f"{mock_upstream.url}/v1", "cache-embed-fail-503", FRANCE),
        (f"http://127.0.0.1:{free_port()}/v1", "cache-embed-stall", JUPITER),
        (f"{mock_upstream.url}/v1", "cache-embed-stall", "Which planet is the largest?"),
    ]
    replies = []
    for url, model, question in asked:
        embedder_at(url, model)
        replies.append(chat(gateway, acme, question))
        assert cache_embeddings_flush(timeout=30)

    assert [(reply.status_code, reply.headers["x-llmops-cache"]) for reply in replies] == [(200, "miss")] * 3
    rows = embedding_rows(acme, ledger_drainer)
    assert rows
    assert {(row.parent_request_id, row.http_status, row.error_code) for row in rows} == {
        (replies[-1].headers["x-llmops-request-id"], 504, "upstream_timeout")
    }
