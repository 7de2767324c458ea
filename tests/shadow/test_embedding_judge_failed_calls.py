"""A paid embedding judge's call (HttpEmbedder, against the mock upstream over loopback HTTP) that fails: charged as the
gateway counts the texts it sent when the provider may bill it (it had the request when the wait for the answer timed
out, or it answered something unreadable), charged nothing when the call never reached it."""

from decimal import ROUND_HALF_EVEN, Decimal

import httpx
import pytest

from billing.models import EvaluationHold, EvaluationSpend, ShadowEvaluation, UsageKind, UsageRecord
from llmops.gateway.shadow.samples import sample_seal
from llmops.gateway.shadow.tasks import shadow_evaluate_task
from llmops.mock_upstream import classification_answer
from routing.cache.embedders import configured_embedder
from routing.models import ModelKind
from routing.tokens import count_text_tokens
from tests.cache.embedders import http_embedder_configured
from tests.factories import ModelFactory, ProviderFactory
from tests.servers import free_port
from tests.shadow.conftest import LABELS_LIST, evaluation_on, sample_of, ticket

PRICE = Decimal("0.13")
QUANTUM = Decimal("0.0000000001")
TICKET = "Charged twice"
ANSWER = "The customer was charged twice for a single order and asks for one of the payments back."
# Long enough for the mock's answers, short enough that a stalled one times out quickly.
READ_TIMEOUT_SECONDS = 1.0


def embeddings_model_create(mock_upstream, name: str):
    """The embeddings model in the catalog, priced; the tenant is not granted it (the gateway calls it)."""
    return ModelFactory(
        name=name,
        provider=ProviderFactory(name="embeddings", base_url=f"{mock_upstream.url}/v1"),
        upstream_name=name,
        kind=ModelKind.EMBEDDING,
        input_price_per_million=PRICE,
        cached_input_price_per_million=PRICE,
        output_price_per_million=Decimal(0),
    )


def evaluate(setup, settings, evaluated, *, url: str, model: str) -> None:
    """A summary (judged by embedding similarity) evaluated for its routing lever, HttpEmbedder calling ``url``."""
    with http_embedder_configured(settings, url=url, model=model):
        configured_embedder().client.timeout = httpx.Timeout(READ_TIMEOUT_SECONDS)
        sample = sample_of(setup, levers={"routing": setup.large.name}, task_type="summarization", answer=ANSWER)
        shadow_evaluate_task(sample_seal(sample))
        evaluated()


def evaluation_rows(setup) -> list[UsageRecord]:
    return list(UsageRecord.objects.for_tenant(setup.tenant).filter(kind=UsageKind.EVALUATION).order_by("created_at"))


@pytest.mark.parametrize(
    ("model", "status", "error_code"),
    [
        ("judge-embed-stall", 504, "upstream_timeout"),
        ("judge-embed-malformed-body-truncated", 502, "upstream_invalid_response"),
        ("judge-embed-malformed-body-array", 502, "upstream_invalid_response"),
    ],
)
def test_a_failed_call_the_provider_had_is_charged_its_texts_as_the_gateway_counts_them(
    acme, mock_upstream, settings, evaluated, model, status, error_code
):
    priced = embeddings_model_create(mock_upstream, model)
    evaluation_on(acme.tenant, budget="1")

    evaluate(acme, settings, evaluated, url=f"{mock_upstream.url}/v1", model=model)

    assert not ShadowEvaluation.objects.for_tenant(acme.tenant).exists()
    reference_row, embedding_row = evaluation_rows(acme)
    reference = classification_answer(ticket(TICKET), LABELS_LIST, acme.large.upstream_name)
    sent_tokens = count_text_tokens(reference, model=model) + count_text_tokens(ANSWER, model=model)
    assert (embedding_row.served_model, embedding_row.parent_request_id) == (model, "req_sampled")
    assert (embedding_row.http_status, embedding_row.error_code) == (status, error_code)
    assert (embedding_row.prompt_tokens, embedding_row.completion_tokens, embedding_row.usage_estimated) == (
        sent_tokens,
        0,
        True,
    )
    price = sent_tokens * PRICE / 1_000_000
    assert embedding_row.cost_usd == price.quantize(QUANTUM, rounding=ROUND_HALF_EVEN) > 0
    assert embedding_row.price_version_id == priced.latest_price_version().pk
    month = EvaluationSpend.objects.for_tenant(acme.tenant).get()
    assert (month.unjudged, month.reserved_usd) == (1, 0)
    assert month.spent_usd == reference_row.cost_usd + embedding_row.cost_usd
    assert not EvaluationHold.objects.for_tenant(acme.tenant).exists()


def test_a_call_that_never_reached_the_provider_is_charged_nothing(acme, mock_upstream, settings, evaluated):
    """Connection refused: the provider never had the request. (The other side of the test above: it holds with the
    code before the change too.)"""
    embeddings_model_create(mock_upstream, "judge-embed")
    evaluation_on(acme.tenant, budget="1")

    evaluate(acme, settings, evaluated, url=f"http://127.0.0.1:{free_port()}/v1", model="judge-embed")

    assert not ShadowEvaluation.objects.for_tenant(acme.tenant).exists()
    (reference_row,) = evaluation_rows(acme)
    month = EvaluationSpend.objects.for_tenant(acme.tenant).get()
    assert (month.unjudged, month.spent_usd, month.reserved_usd) == (1, reference_row.cost_usd, 0)
