"""The embedding judge through a provider's paid /embeddings (HttpEmbedder, against the mock upstream over loopback
HTTP) is metered as the evaluation's other calls are: its worst case reserved with the reference's before either is
called, its call a ledger row of kind `evaluation` settled against the evaluation budget."""

from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from billing.models import EvaluationHold, EvaluationSpend, JudgeMethod, ShadowEvaluation, UsageKind, UsageRecord
from llmops.gateway.shadow.samples import sample_seal
from llmops.gateway.shadow.tasks import shadow_evaluate_task
from routing.models import ModelKind
from tests.cache.embedders import http_embedder_configured
from tests.factories import ModelFactory, ProviderFactory
from tests.shadow.conftest import evaluation_on, sample_of

EMBEDDINGS_MODEL = "judge-embed"
PRICE = Decimal("0.13")
QUANTUM = Decimal("0.0000000001")


@pytest.fixture
def http_embedder(settings, mock_upstream):
    """HttpEmbedder as the process's embedder, calling the mock upstream's /embeddings for EMBEDDINGS_MODEL."""
    with http_embedder_configured(settings, url=f"{mock_upstream.url}/v1", model=EMBEDDINGS_MODEL) as configured:
        yield configured


def embeddings_model_create(mock_upstream, *, price: Decimal = PRICE):
    """The embeddings model in the catalog; the tenant is not granted it (the gateway, not the tenant, calls it)."""
    return ModelFactory(
        name=EMBEDDINGS_MODEL,
        provider=ProviderFactory(name="embeddings", base_url=f"{mock_upstream.url}/v1"),
        upstream_name=EMBEDDINGS_MODEL,
        kind=ModelKind.EMBEDDING,
        input_price_per_million=price,
        cached_input_price_per_million=price,
        output_price_per_million=Decimal(0),
    )


def evaluate(setup, evaluated) -> None:
    """A summary (free text: judged by embedding similarity without a judge model) evaluated for its routing lever."""
    shadow_evaluate_task(sample_seal(sample_of(setup, levers={"routing": setup.large.name}, task_type="summarization")))
    evaluated()


def evaluation_rows(setup) -> list[UsageRecord]:
    return list(UsageRecord.objects.for_tenant(setup.tenant).filter(kind=UsageKind.EVALUATION).order_by("created_at"))


def test_a_paid_embedding_judge_s_call_is_an_evaluation_row_the_evaluation_budget_pays(
    acme, mock_upstream, http_embedder, evaluated
):
    model = embeddings_model_create(mock_upstream)
    evaluation_on(acme.tenant, budget="1")
    calls_before = mock_upstream.app.requests_served

    evaluate(acme, evaluated)

    (evaluation,) = ShadowEvaluation.objects.for_tenant(acme.tenant)
    assert evaluation.method == JudgeMethod.EMBEDDING
    # The reference, then the embedding of its answer and the sample's.
    assert mock_upstream.app.requests_served - calls_before == 2
    reference_row, embedding_row = evaluation_rows(acme)
    assert reference_row.served_model == acme.large.name
    assert (embedding_row.served_model, embedding_row.parent_request_id) == (EMBEDDINGS_MODEL, "req_sampled")
    assert (embedding_row.team_id, embedding_row.api_key_id) == (acme.team.pk, acme.api_key.pk)
    assert (embedding_row.route, embedding_row.completion_tokens, embedding_row.usage_estimated) == (
        "shadow-evaluation",
        0,
        False,
    )
    assert embedding_row.prompt_tokens > 0
    price = embedding_row.prompt_tokens * PRICE / 1_000_000
    assert embedding_row.cost_usd == price.quantize(QUANTUM, rounding=ROUND_HALF_EVEN) > 0
    assert embedding_row.price_version_id == model.latest_price_version().pk
    month = EvaluationSpend.objects.for_tenant(acme.tenant).get()
    assert month.spent_usd == reference_row.cost_usd + embedding_row.cost_usd == evaluation.cost_usd
    assert (month.reserved_usd, month.refused) == (0, 0)
    assert not EvaluationHold.objects.for_tenant(acme.tenant).exists()
    # Not the semantic cache's: no cache_embedding row.
    assert not UsageRecord.objects.for_tenant(acme.tenant).filter(kind=UsageKind.CACHE_EMBEDDING).exists()


def test_the_embedding_call_s_worst_case_is_reserved_before_the_reference_is_called(
    acme, mock_upstream, http_embedder, evaluated
):
    """A budget that covers the reference call and not the embedding's: nothing is called, rather than a reference
    paid for with no verdict."""
    # The two answers' most tokens (the reference's 5, the sample's answer) at $1,000 a million: above $0.005.
    embeddings_model_create(mock_upstream, price=Decimal(1000))
    evaluation_on(acme.tenant, budget="0.001")
    calls_before = mock_upstream.app.requests_served

    evaluate(acme, evaluated)

    assert mock_upstream.app.requests_served == calls_before
    assert evaluation_rows(acme) == []
    month = EvaluationSpend.objects.for_tenant(acme.tenant).get()
    assert (month.refused, month.spent_usd, month.reserved_usd) == (1, 0, 0)


def test_an_embeddings_model_the_catalog_does_not_price_is_recorded_at_no_cost_and_flagged(
    acme, mock_upstream, http_embedder, evaluated
):
    evaluation_on(acme.tenant, budget="1")

    evaluate(acme, evaluated)

    assert ShadowEvaluation.objects.for_tenant(acme.tenant).get().method == JudgeMethod.EMBEDDING
    _, embedding_row = evaluation_rows(acme)
    assert (embedding_row.served_model, embedding_row.cost_usd, embedding_row.error_code) == (
        EMBEDDINGS_MODEL,
        0,
        "unpriced_model",
    )
    assert embedding_row.prompt_tokens > 0 and embedding_row.price_version_id is None


def test_a_failed_embedding_call_reaches_no_verdict_and_leaves_nothing_reserved(
    acme, mock_upstream, http_embedder, evaluated
):
    http_embedder.LLMOPS_CACHE_EMBEDDINGS_MODEL = "judge-embed-fail-503"
    evaluation_on(acme.tenant, budget="1")

    evaluate(acme, evaluated)

    assert not ShadowEvaluation.objects.for_tenant(acme.tenant).exists()
    (reference_row,) = evaluation_rows(acme)
    month = EvaluationSpend.objects.for_tenant(acme.tenant).get()
    assert (month.unjudged, month.spent_usd, month.reserved_usd) == (1, reference_row.cost_usd, 0)
