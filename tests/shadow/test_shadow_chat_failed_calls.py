"""An evaluation's chat call (the reference's, an LLM judge's, against the mock upstream over loopback HTTP) that
times out once the provider had the request: charged as a request's failed attempt is, the gateway's count of its
prompt at the model's prices, estimated, on its `evaluation` row with the failure's status and code."""

from decimal import ROUND_HALF_EVEN, Decimal

from billing.models import EvaluationHold, EvaluationSpend, ShadowEvaluation, UsageKind, UsageRecord
from llmops.gateway.shadow.judges import judge_messages
from llmops.gateway.shadow.samples import sample_seal
from llmops.gateway.shadow.tasks import shadow_evaluate_task
from llmops.mock_upstream import classification_answer
from routing.tokens import count_chat_tokens
from tests.conftest import LARGE_PRICES
from tests.gateway.test_failed_attempts_live import large_model
from tests.shadow.conftest import LABELS_LIST, evaluation_on, sample_of, ticket

QUANTUM = Decimal("0.0000000001")
TICKET = "Charged twice"
# Long enough for the mock's answers, short enough that a stalled one times out quickly.
TIMEOUT_SECONDS = Decimal("1")


def stalling_model(setup, mock_upstream, *, name: str, upstream_name: str):
    """A model at the large model's prices whose calls time out after TIMEOUT_SECONDS: the mock's `stall` answers
    after 30."""
    return large_model(setup, name, base_url=mock_upstream.url, upstream_name=upstream_name, timeout=TIMEOUT_SECONDS)


def evaluation_rows(setup) -> list[UsageRecord]:
    return list(UsageRecord.objects.for_tenant(setup.tenant).filter(kind=UsageKind.EVALUATION).order_by("created_at"))


def assert_charged_its_prompt(row: UsageRecord, model, *, prompt_tokens: int) -> None:
    assert (row.served_model, row.parent_request_id) == (model.name, "req_sampled")
    assert (row.http_status, row.error_code) == (504, "upstream_timeout")
    assert (row.prompt_tokens, row.completion_tokens, row.usage_estimated) == (prompt_tokens, 0, True)
    price = prompt_tokens * LARGE_PRICES[0] / 1_000_000
    assert row.cost_usd == price.quantize(QUANTUM, rounding=ROUND_HALF_EVEN) > 0
    assert row.price_version_id == model.latest_price_version().pk


def assert_unjudged_and_paid(setup, rows: list[UsageRecord]) -> None:
    assert not ShadowEvaluation.objects.for_tenant(setup.tenant).exists()
    month = EvaluationSpend.objects.for_tenant(setup.tenant).get()
    assert (month.unjudged, month.reserved_usd) == (1, 0)
    assert month.spent_usd == sum(row.cost_usd for row in rows)
    assert not EvaluationHold.objects.for_tenant(setup.tenant).exists()


def test_a_reference_call_that_timed_out_once_sent_is_charged_its_prompt(acme, mock_upstream, evaluated):
    reference = stalling_model(acme, mock_upstream, name="acme-stalling", upstream_name="mock-large-stall")
    evaluation_on(acme.tenant)

    shadow_evaluate_task(sample_seal(sample_of(acme, levers={"routing": reference.name}, text=TICKET)))
    evaluated()

    (row,) = evaluation_rows(acme)
    assert_charged_its_prompt(row, reference, prompt_tokens=count_chat_tokens(ticket(TICKET), model="mock-large-stall"))
    assert_unjudged_and_paid(acme, [row])


def test_a_judge_call_that_timed_out_once_sent_is_charged_its_prompt(acme, mock_upstream, evaluated):
    judge = stalling_model(acme, mock_upstream, name="acme-stalling-judge", upstream_name="mock-judge-stall")
    evaluation_on(acme.tenant, judge_model=judge)
    sample = sample_of(acme, levers={"routing": acme.large.name}, task_type="summarization", text=TICKET)

    shadow_evaluate_task(sample_seal(sample))
    evaluated()

    reference_row, judge_row = evaluation_rows(acme)
    assert (reference_row.served_model, reference_row.http_status) == (acme.large.name, 200)
    reference_answer = classification_answer(ticket(TICKET), LABELS_LIST, acme.large.upstream_name)
    sent = judge_messages(ticket(TICKET), reference=reference_answer, candidate=sample.answer)
    assert_charged_its_prompt(judge_row, judge, prompt_tokens=count_chat_tokens(sent, model="mock-judge-stall"))
    assert_unjudged_and_paid(acme, [reference_row, judge_row])
