"""The semantic cache's embeddings through a provider's paid /embeddings (HttpEmbedder, against the mock upstream over
loopback HTTP) are metered: each request whose prompt was embedded gets a `cache_embedding` ledger row of its own
tenant, key and team for its share of the call, priced from the catalog, and its budgets are charged it."""

import asyncio
import subprocess
import sys
import time
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest
from celery.signals import worker_process_shutdown
from django.utils import timezone

from billing.budgets.services import budget_counter_check, budget_counters_rebuild, budget_create
from billing.models import UsageKind, UsageRecord
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat import cache_embeddings
from llmops.gateway.chat.cache_embeddings import CacheEmbeddingPayer, cache_embeddings_flush
from llmops.gateway.snapshot import shared_slice_build, tenant_slice_build
from routing.cache.embedders import EmbeddingCall, EmbeddingShare
from routing.cache.keys import normalize_prompt
from routing.models import ModelKind
from routing.prices import model_price_set
from routing.tokens import count_text_tokens
from tests.cache.conftest import cache_policy, chat
from tests.cache.embedders import chats_in_one_embedding_call, http_embedder_configured
from tests.factories import ModelFactory, ProviderFactory

EMBEDDINGS_MODEL = "cache-embed"
# USD per million tokens. Six tokens cost 7,801.5 of the ledger's quanta and fourteen 18,203.5: each rounded alone,
# the two would come to a quantum more than the twenty together (26,005).
EMBEDDINGS_PRICE = Decimal("0.130025")
QUANTUM = Decimal("0.0000000001")
ROOT = Path(__file__).resolve().parents[2]
FRANCE = "What is the capital of France?"
JUPITER = "How many moons does Jupiter have, and which one is the largest?"


def embedding_tokens(question: str, model: str = EMBEDDINGS_MODEL) -> int:
    """The tokens of what the cache embeds of a one-turn question (its normalised text), as the mock counts them."""
    return count_text_tokens(normalize_prompt(question), model=model)


def priced(tokens: int) -> Decimal:
    return (tokens * EMBEDDINGS_PRICE / 1_000_000).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def embedding_rows(*, expected: int, timeout: float = 10.0) -> list[UsageRecord]:
    """The cache_embedding rows once there are `expected` of them (they are written off the request's path), or
    those there are when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageRecord.objects.unscoped().filter(kind=UsageKind.CACHE_EMBEDDING).order_by("created_at"))
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


@pytest.fixture
def http_embedder(settings, mock_upstream):
    """HttpEmbedder as the process's embedder, calling the mock upstream's /embeddings for EMBEDDINGS_MODEL."""
    with http_embedder_configured(settings, url=f"{mock_upstream.url}/v1", model=EMBEDDINGS_MODEL) as configured:
        yield configured


def embeddings_model_create(mock_upstream, name: str = EMBEDDINGS_MODEL):
    """The embeddings model in the catalog (no tenant is granted it: the gateway, not the tenant, calls it)."""
    provider = ProviderFactory(name=f"embeddings-for-{name}", base_url=f"{mock_upstream.url}/v1")
    return ModelFactory(
        name=name,
        provider=provider,
        upstream_name=name,
        kind=ModelKind.EMBEDDING,
        input_price_per_million=EMBEDDINGS_PRICE,
        cached_input_price_per_million=EMBEDDINGS_PRICE,
        output_price_per_million=Decimal(0),
    )


@pytest.fixture
def embeddings_model(gateway, mock_upstream):
    return embeddings_model_create(mock_upstream)


def test_a_semantic_lookup_through_the_http_embedder_is_a_ledger_row_of_its_request(
    gateway, acme, http_embedder, embeddings_model
):
    cache_policy(acme)

    reply = chat(gateway, acme, FRANCE)

    assert (reply.status_code, reply.headers["x-llmops-cache"]) == (200, "miss")
    request_id = reply.headers["x-llmops-request-id"]
    (row,) = embedding_rows(expected=1)
    tokens = embedding_tokens(FRANCE)
    assert (row.tenant_id, row.team_id, row.api_key_id) == (acme.tenant.pk, acme.team.pk, acme.api_key.pk)
    assert (row.parent_request_id, row.endpoint) == (request_id, "/v1/chat/completions")
    assert (row.served_model, row.prompt_tokens, row.completion_tokens) == (EMBEDDINGS_MODEL, tokens, 0)
    assert (row.usage_estimated, row.http_status, row.error_code) == (False, 200, "")
    assert row.cost_usd == priced(tokens) == Decimal("0.0000007802")
    assert row.price_version_id == embeddings_model.latest_price_version().pk
    assert row.request_id != request_id
    # The request's own row is apart, and is charged for its completion only.
    request_row = UsageRecord.objects.for_tenant(acme.tenant).get(request_id=request_id)
    assert (request_row.kind, request_row.served_model) == (UsageKind.REQUEST, acme.small.name)


def test_two_tenants_texts_embedded_in_one_call_are_each_charged_their_share(
    gateway, acme, globex, http_embedder, embeddings_model, mock_upstream
):
    http_embedder.LLMOPS_CACHE_EMBED_WAIT_SECONDS = 10
    cache_policy(acme)
    cache_policy(globex)
    asked = [(acme, FRANCE), (globex, JUPITER)]
    served_before = mock_upstream.app.requests_served

    # Both texts in one /embeddings call.
    replies = chats_in_one_embedding_call(gateway, asked, chat)

    assert [reply.status_code for reply in replies] == [200, 200]
    # Two completions and one /embeddings call.
    assert mock_upstream.app.requests_served - served_before == 3
    rows = embedding_rows(expected=2)
    assert len(rows) == 2
    call_tokens = sum(embedding_tokens(question) for _, question in asked)
    assert sum(row.prompt_tokens for row in rows) == call_tokens
    assert sum(row.cost_usd for row in rows) == priced(call_tokens) == Decimal("0.0000026005")
    for (setup, question), reply in zip(asked, replies, strict=True):
        # Each tenant sees its own row only, for its own request, key and team.
        (row,) = UsageRecord.objects.for_tenant(setup.tenant).filter(kind=UsageKind.CACHE_EMBEDDING)
        assert row.parent_request_id == reply.headers["x-llmops-request-id"]
        assert (row.team_id, row.api_key_id) == (setup.team.pk, setup.api_key.pk)
        assert row.prompt_tokens == embedding_tokens(question)
        # Its own tokens at the price, give or take the quantum that makes the two add up to the call.
        assert abs(row.cost_usd - row.prompt_tokens * EMBEDDINGS_PRICE / 1_000_000) <= QUANTUM


def test_the_embedding_cost_reaches_the_budget_counters_of_its_request(gateway, acme, http_embedder, embeddings_model):
    cache_policy(acme)
    budget = budget_create(tenant=acme.tenant, scope="team", team=acme.team, period="day", limit_usd=Decimal("5"))
    # Its counter started before the request, so the embedding's cost is counted by the charge, not by a seed.
    budget_counters_rebuild(budget=budget)

    reply = chat(gateway, acme, FRANCE)

    assert reply.status_code == 200
    (row,) = embedding_rows(expected=1)
    request_cost = Decimal(reply.headers["x-llmops-cost-usd"])
    check = budget_counter_check(budget=budget, now=timezone.now())
    assert check.ledger_usd == request_cost + row.cost_usd
    assert check.counted_usd == request_cost + row.cost_usd


def test_an_answer_without_usage_is_charged_at_the_gateway_s_count_marked_estimated(
    gateway, acme, http_embedder, mock_upstream
):
    # The mock leaves usage out of a no-usage model's answer.
    model = "cache-embed-no-usage"
    http_embedder.LLMOPS_CACHE_EMBEDDINGS_MODEL = model
    embeddings_model_create(mock_upstream, name=model)
    cache_policy(acme)

    assert chat(gateway, acme, FRANCE).status_code == 200

    (row,) = embedding_rows(expected=1)
    tokens = embedding_tokens(FRANCE, model=model)
    assert (row.tenant_id, row.served_model, row.prompt_tokens, row.usage_estimated) == (
        acme.tenant.pk,
        model,
        tokens,
        True,
    )
    assert row.cost_usd == priced(tokens)


def test_a_model_the_catalog_does_not_price_is_recorded_with_its_tokens_at_no_cost_and_flagged(
    gateway, acme, http_embedder, caplog
):
    cache_policy(acme)
    # Warned about once per process: as if this process had not met the model yet.
    cache_embeddings._unpriced_warned.discard(EMBEDDINGS_MODEL)

    for question in (FRANCE, JUPITER):
        assert chat(gateway, acme, question).status_code == 200

    rows = embedding_rows(expected=2)
    assert [(row.prompt_tokens, row.cost_usd, row.price_version_id, row.error_code) for row in rows] == [
        (embedding_tokens(FRANCE), 0, None, "unpriced_model"),
        (embedding_tokens(JUPITER), 0, None, "unpriced_model"),
    ]
    assert {(row.tenant_id, row.served_model) for row in rows} == {(acme.tenant.pk, EMBEDDINGS_MODEL)}
    assert caplog.text.count(f"cache embeddings model {EMBEDDINGS_MODEL} is not in the model catalog") == 1


def test_a_local_embedder_leaves_no_embedding_rows(gateway, acme, gated_embedder):
    cache_policy(acme)

    assert chat(gateway, acme, FRANCE).status_code == 200

    assert gated_embedder.calls == [[normalize_prompt(FRANCE)]]
    assert embedding_rows(expected=1, timeout=0.5) == []


def payer_of(setup) -> CacheEmbeddingPayer:
    """The payer of a request of ``setup``'s key, on its tenant's configuration as it is now."""
    snapshot = tenant_slice_build(tenant_id=setup.tenant.pk, version=None).snapshot(shared_slice_build(version=None))
    (principal,) = snapshot.keys.values()
    return CacheEmbeddingPayer(snapshot, GatewayCall(principal=principal, endpoint="/v1/chat/completions"))


def call_of(*parts: int) -> EmbeddingCall:
    return EmbeddingCall(model=EMBEDDINGS_MODEL, parts=parts, estimated=False, elapsed_ms=3)


@pytest.fixture
def slow_recording(monkeypatch):
    """Each share's row and budget charge are written only after a pause: work still pending when the test looks."""
    charge = cache_embeddings.budget_charge

    async def later(**kwargs):
        await asyncio.sleep(0.5)
        return await charge(**kwargs)

    monkeypatch.setattr(cache_embeddings, "budget_charge", later)


def test_one_call_is_priced_once_though_its_requests_saw_different_prices(
    gateway, acme, globex, embeddings_model, ledger_drainer
):
    first = embeddings_model.latest_price_version()
    acme_payer = payer_of(acme)
    # A new price takes effect between the two requests' snapshots: each holds another version.
    doubled = {name: getattr(first, name) * 2 for name in ("input_price_per_million", "cached_input_price_per_million")}
    assert model_price_set(model=embeddings_model, prices=doubled, source="test") is not None
    globex_payer = payer_of(globex)
    call = call_of(6, 14)

    acme_payer.charge(EmbeddingShare(call, 0))
    globex_payer.charge(EmbeddingShare(call, 1))
    assert cache_embeddings_flush(timeout=10)
    ledger_drainer.wait_drained()

    rows = embedding_rows(expected=2)
    # The whole call at the first share's prices, and the rows are its parts.
    assert sum(row.cost_usd for row in rows) == priced(20) == Decimal("0.0000026005")
    assert {row.price_version_id for row in rows} == {first.pk}
    assert sorted((row.tenant_id, row.prompt_tokens) for row in rows) == [(acme.tenant.pk, 6), (globex.tenant.pk, 14)]


def test_the_flush_waits_for_the_shares_being_recorded(gateway, acme, embeddings_model, ledger_drainer, slow_recording):
    payer_of(acme).charge(EmbeddingShare(call_of(6), 0))

    assert cache_embeddings_flush(timeout=10)
    ledger_drainer.wait_drained()

    (row,) = UsageRecord.objects.for_tenant(acme.tenant).filter(kind=UsageKind.CACHE_EMBEDDING)
    assert (row.prompt_tokens, row.cost_usd) == (6, priced(6))


def test_a_celery_pool_process_records_its_shares_as_it_stops(
    gateway, acme, embeddings_model, ledger_drainer, slow_recording
):
    payer_of(acme).charge(EmbeddingShare(call_of(6), 0))

    # Sent in a pool process before it ends with os._exit, which runs no exit hook.
    worker_process_shutdown.send(sender=None, pid=0, exitcode=0)
    ledger_drainer.wait_drained()

    assert UsageRecord.objects.for_tenant(acme.tenant).filter(kind=UsageKind.CACHE_EMBEDDING).count() == 1


EXITING = """
import asyncio
import sys

import django

django.setup()

from llmops.gateway.call import GatewayCall
from llmops.gateway.chat import cache_embeddings
from llmops.gateway.snapshot import shared_slice_build, tenant_slice_build
from routing.cache.embedders import EmbeddingCall, EmbeddingShare

snapshot = tenant_slice_build(tenant_id=int(sys.argv[1]), version=None).snapshot(shared_slice_build(version=None))
(principal,) = snapshot.keys.values()
call = GatewayCall(principal=principal, endpoint="/v1/chat/completions")
charge = cache_embeddings.budget_charge


async def later(**kwargs):
    # Still being recorded when the interpreter exits.
    await asyncio.sleep(0.5)
    return await charge(**kwargs)


cache_embeddings.budget_charge = later
share = EmbeddingShare(EmbeddingCall(model=sys.argv[2], parts=(6,), estimated=False, elapsed_ms=3), 0)
cache_embeddings.CacheEmbeddingPayer(snapshot, call).charge(share)
"""


def test_a_process_that_exits_records_the_shares_on_their_way(acme, embeddings_model, process_env, ledger_drainer):
    finished = subprocess.run(
        [sys.executable, "-c", EXITING, str(acme.tenant.pk), EMBEDDINGS_MODEL],
        cwd=ROOT,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    ledger_drainer.wait_drained()
    (row,) = UsageRecord.objects.for_tenant(acme.tenant).filter(kind=UsageKind.CACHE_EMBEDDING)
    assert (row.prompt_tokens, row.cost_usd, row.price_version_id) == (
        6,
        priced(6),
        embeddings_model.latest_price_version().pk,
    )
