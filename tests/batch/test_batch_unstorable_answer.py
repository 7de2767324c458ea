"""Batch lines whose upstream answer the database cannot give back as it was sent (here U+0000, which a model can
write and jsonb cannot hold), run one by one or merged from a provider's batch: the line fails 502
``upstream_answer_unstorable`` with its ledger row in the batch's cost and in the budget counters, and is not run
again, which would call the upstream and charge the same answer a second time."""

import time

import pytest

from llmops import mock_upstream as mock_upstream_module
from llmops.gateway.batches.models import Batch, BatchLine
from llmops.gateway.batches.runner import batch_process
from tests.batch.conftest import DELEGATING_PROVIDER, chat_line, provider_model, rows
from tests.batch.test_batches_live import batch_ledger
from tests.batch.test_delegation_live import (
    ChangesBatchAnswers,
    assert_charged_and_released,
    create,
    team_day_budget,
)
from tests.batch.test_job_failures import AnsweringNul
from tests.loops import run as run_on_a_new_loop
from tests.servers import serving

pytestmark = pytest.mark.live

NUL_LINE = "nul"


def nul_in_content(custom_id: str, answer: dict) -> None:
    """Puts a NUL in the content of the NUL_LINE line's answer."""
    if custom_id == NUL_LINE:
        answer["choices"][0]["message"]["content"] = "a\u0000b"


@pytest.fixture
def nul_upstream():
    yield from serving(AnsweringNul())


@pytest.fixture
def nul_batch_upstream():
    yield from serving(ChangesBatchAnswers(nul_in_content))


@pytest.fixture
def batches_here(live_broker, files_root, settings):
    """Batches run in this process (batch_process), delegating to DELEGATING_PROVIDER, with the default attempts: a
    transient failure would be run again."""
    settings.LLMOPS_BATCH_DELEGATE_PROVIDERS = [DELEGATING_PROVIDER]
    assert settings.LLMOPS_BATCH_LINE_MAX_ATTEMPTS > 1


def assert_unstorable(line: BatchLine) -> None:
    assert (line.status, line.status_code) == ("failed", 502)
    error = line.response_body["error"]
    assert (error["type"], error["code"], error["param"]) == ("api_error", "upstream_answer_unstorable", None)
    assert "'choices[0].message.content' holds the NUL character" in error["message"]
    assert "What the provider billed for it is charged" in error["message"]


def test_a_line_answered_with_nul_fails_charged_and_is_not_run_again(
    batches_here, openai_client, acme, mock_upstream, nul_upstream
):
    provider_model(nul_upstream.url, provider_name="mock-answering-nul", model_name="acme-nul", tenant=acme)
    budget = team_day_budget(acme, "1")
    batch_id = create(
        openai_client, [chat_line(NUL_LINE, "acme-nul", max_tokens=24), chat_line("fine", acme.small.name)]
    )

    run_on_a_new_loop(batch_process(batch_id))
    run_on_a_new_loop(batch_process(batch_id))  # a later look at the batch finds nothing left to run

    done = openai_client.batches.retrieve(batch_id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 1, 1)
    assert nul_upstream.app.calls == 1
    lines = {line.custom_id: line for line in BatchLine.objects.unscoped().filter(batch_id=batch_id)}
    assert_unstorable(lines[NUL_LINE])
    [failed] = rows(openai_client, done.error_file_id)
    assert failed["response"]["body"] == lines[NUL_LINE].response_body
    ledger = {record.request_id: record for record in batch_ledger(batch_id)}
    record = ledger[lines[NUL_LINE].request_id]
    assert (record.prompt_tokens, record.completion_tokens) == (10, 3)
    assert record.cost_usd > 0
    assert len(ledger) == 2
    charged = sum(record.cost_usd for record in ledger.values())
    assert Batch.objects.unscoped().get(pk=batch_id).cost_usd == charged
    assert_charged_and_released(budget, charged)


def test_a_delegated_line_answered_with_nul_fails_charged_and_the_others_are_merged(
    batches_here, openai_client, acme, nul_batch_upstream
):
    provider_model(nul_batch_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget = team_day_budget(acme, "1")
    provider = nul_batch_upstream.app.upstream
    batch_id = create(
        openai_client, [chat_line(custom_id, "acme-batchable", max_tokens=24) for custom_id in (NUL_LINE, "fine")]
    )

    run_on_a_new_loop(batch_process(batch_id))  # submits the lines
    time.sleep(mock_upstream_module.BATCH_SECONDS)
    run_on_a_new_loop(batch_process(batch_id))  # merges the results
    run_on_a_new_loop(batch_process(batch_id))  # a later look at the batch finds nothing left to run

    batch = Batch.objects.unscoped().get(pk=batch_id)
    assert (batch.status, batch.completed_count, batch.failed_count) == ("completed", 1, 1)
    assert (provider.batch_lines_served, provider.requests_served) == (2, 0)
    lines = {line.custom_id: line for line in BatchLine.objects.unscoped().filter(batch_id=batch_id)}
    assert_unstorable(lines[NUL_LINE])
    assert lines["fine"].status_code == 200
    ledger = {record.request_id: record for record in batch_ledger(batch_id)}
    assert len(ledger) == 2
    assert ledger[lines[NUL_LINE].request_id].cost_usd > 0
    charged = sum(record.cost_usd for record in ledger.values())
    assert batch.cost_usd == charged
    assert_charged_and_released(budget, charged)
