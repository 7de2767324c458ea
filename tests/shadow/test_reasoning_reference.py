"""A reference model that reasons before it answers, and reports no usage: its evaluation call is charged the
reasoning it wrote, which the provider bills as output, and judged on its answer alone."""

import pytest

from billing.models import ShadowEvaluation
from llmops.gateway.shadow.samples import sample_seal
from llmops.gateway.shadow.tasks import shadow_evaluate_task
from routing.tokens import count_text_tokens
from tests.factories import ModelFactory, ProviderFactory
from tests.gateway.test_upstream_failures import THOUGHT, ThinkingUpstream
from tests.servers import serving
from tests.shadow.conftest import evaluation_on, evaluation_rows, sample_of


@pytest.fixture(scope="module")
def thinking_billing_upstream():
    yield from serving(ThinkingUpstream(answer="billing"))


def test_a_reference_that_reasons_is_charged_its_reasoning_and_judged_on_its_answer(
    acme, thinking_billing_upstream, evaluated
):
    reference = ModelFactory(name="thinker", provider=ProviderFactory(base_url=f"{thinking_billing_upstream.url}/v1"))
    acme.tenant.model_access.allowed_models.add(reference)
    evaluation_on(acme.tenant)

    shadow_evaluate_task(sample_seal(sample_of(acme, levers={"routing": reference.name}, answer="billing")))
    evaluated()

    (row,) = evaluation_rows("req_sampled")
    assert (row.served_model, row.http_status, row.usage_estimated) == (reference.name, 200, True)
    # The sample's max_tokens (5) bounds the count, as it bounds what the provider bills; the answer alone is 1.
    assert row.completion_tokens == min(count_text_tokens(THOUGHT + "billing", model=reference.upstream_name), 5) == 5
    evaluation = ShadowEvaluation.objects.for_tenant(acme.tenant).get()
    assert (evaluation.reference_model, evaluation.agrees) == (reference.name, True)
