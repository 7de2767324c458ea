"""The Batch API with the openai SDK against the live gateway and a live Celery worker."""

import io
from decimal import Decimal

import openai
import orjson
import pytest

from billing.models import UsageRecord
from llmops.gateway.batch_models import Batch, BatchLine
from llmops.gateway.batch_services import line_request_id
from tests.batch.conftest import DELEGATING_PROVIDER, celery_worker, chat_line, jsonl, provider_model, wait_for
from tests.factories import ModelFactory

pytestmark = pytest.mark.live
FINISHED = ("completed", "failed", "cancelled", "expired")


def upload(client, lines: list) -> str:
    return client.files.create(file=("batch.jsonl", io.BytesIO(jsonl(lines))), purpose="batch").id


def wait_finished(client, batch_id: str, timeout: float = 30):
    return wait_for(lambda: (b := client.batches.retrieve(batch_id)).status in FINISHED and b, timeout=timeout)


def rows(client, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines()]


def batch_ledger(batch_id: str, *, expect: int):
    """The batch's ledger rows, once ``expect`` of them are drained from the ledger stream (none more after)."""
    records = UsageRecord.objects.filter(endpoint="/v1/batches", tags__contains=[f"batch:{batch_id}"])
    wait_for(lambda: records.count() >= expect, timeout=10)
    return list(records)


def test_mixed_batch_completes_with_output_and_error_files(worker, openai_client, acme):
    failing = ModelFactory(name="acme-broken", provider=acme.small.provider, upstream_name="fail-400")
    from routing.services import tenant_model_access_set

    tenant_model_access_set(tenant=acme.tenant, allowed_models=[acme.small, failing], default_model=acme.small)
    lines = [
        chat_line("ok-1", "acme-small", "first question", max_tokens=5),
        chat_line("ok-2", "acme-small", "second question"),
        chat_line("refused", "acme-broken"),
        chat_line("unknown-model", "gpt-nope"),
    ]
    file_id = upload(openai_client, lines)
    batch = openai_client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"}
    )
    assert batch.object == "batch" and batch.id.startswith("batch_") and batch.status == "validating"

    done = wait_finished(openai_client, batch.id)

    assert done.status == "completed"
    assert done.metadata == {"job": "nightly"}
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 2, 2)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = {row["custom_id"]: row for row in rows(openai_client, done.output_file_id)}
    errors = {row["custom_id"]: row for row in rows(openai_client, done.error_file_id)}
    assert set(output) == {"ok-1", "ok-2"} and set(errors) == {"refused", "unknown-model"}
    first = output["ok-1"]["response"]
    assert first["status_code"] == 200 and first["body"]["object"] == "chat.completion"
    assert first["body"]["usage"]["completion_tokens"] == 5
    assert errors["refused"]["response"]["status_code"] == 400
    assert errors["unknown-model"]["response"]["body"]["error"]["code"] == "model_not_found"
    ledger = {record.request_id: record for record in batch_ledger(batch.id, expect=4)}
    assert set(ledger) == {row["response"]["request_id"] for row in [*output.values(), *errors.values()]}
    assert ledger[first["request_id"]].cost_usd > 0 and ledger[first["request_id"]].api_key_id == acme.api_key.pk
    assert Batch.objects.get(pk=batch.id).cost_usd == sum(r.cost_usd for r in ledger.values())
    assert openai_client.files.retrieve(done.output_file_id).purpose == "batch_output"
    with pytest.raises(openai.ConflictError):
        openai_client.batches.cancel(batch.id)


def test_cancel_mid_run_keeps_finished_lines_and_runs_no_more(worker, openai_client, acme, slow_upstream):
    provider_model(slow_upstream.url, provider_name="slow-mock", model_name="acme-slow", tenant=acme)
    file_id = upload(openai_client, [chat_line(f"line-{n}", "acme-slow") for n in range(30)])
    batch = openai_client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(lambda: openai_client.batches.retrieve(batch.id).request_counts.completed >= 2)

    cancelling = openai_client.batches.cancel(batch.id)
    done = wait_finished(openai_client, batch.id)

    assert cancelling.status == "cancelling"
    assert done.status == "cancelled" and done.cancelled_at
    completed = done.request_counts.completed
    assert 2 <= completed < 30
    cancelled = [row for row in rows(openai_client, done.error_file_id) if row["error"]]
    assert len(cancelled) == 30 - completed and {row["error"]["code"] for row in cancelled} == {"batch_cancelled"}
    assert len(batch_ledger(batch.id, expect=completed)) == completed


def test_worker_killed_mid_batch_resumes_and_runs_every_line_once(worker, openai_client, acme, slow_upstream):
    provider_model(slow_upstream.url, provider_name="slow-mock", model_name="acme-slow", tenant=acme)
    total = 24
    served_before = slow_upstream.app.requests_served
    file_id = upload(openai_client, [chat_line(f"line-{n}", "acme-slow", f"question {n}") for n in range(total)])
    batch = openai_client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(lambda: openai_client.batches.retrieve(batch.id).request_counts.completed >= 4)

    worker.kill()
    before = openai_client.batches.retrieve(batch.id).request_counts.completed
    restarted = celery_worker().start()
    try:
        done = wait_finished(openai_client, batch.id)
    finally:
        restarted.stop()

    assert 4 <= before < total
    assert done.status == "completed" and done.request_counts.completed == total
    output = rows(openai_client, done.output_file_id)
    assert sorted(row["custom_id"] for row in output) == sorted(f"line-{n}" for n in range(total))
    ledger = batch_ledger(batch.id, expect=total)
    assert len(ledger) == total
    expected_ids = {line_request_id(batch_id=batch.id, custom_id=f"line-{n}", attempt=0) for n in range(total)}
    assert {record.request_id for record in ledger} == expected_ids
    assert {row["response"]["request_id"] for row in output} == expected_ids
    # Lines in flight when the worker died reached the upstream twice at most; none more.
    assert total <= slow_upstream.app.requests_served - served_before <= total + 2


def test_delegated_to_provider_batch_endpoint_at_the_discount(worker, openai_client, acme, mock_upstream):
    model = provider_model(
        mock_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme
    )
    served_before, batch_lines_before = mock_upstream.app.requests_served, mock_upstream.app.batch_lines_served
    lines = [chat_line(f"d-{n}", "acme-batchable", f"summarise report {n}") for n in range(3)]
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )

    done = wait_finished(openai_client, batch.id)

    assert done.status == "completed" and done.request_counts.completed == 3
    assert mock_upstream.app.batch_lines_served - batch_lines_before == 3
    assert mock_upstream.app.requests_served == served_before
    stored = Batch.objects.get(pk=batch.id)
    assert list(stored.provider_batches) == [DELEGATING_PROVIDER]
    assert set(BatchLine.objects.filter(batch=stored).values_list("provider", flat=True)) == {DELEGATING_PROVIDER}
    ledger = batch_ledger(batch.id, expect=3)
    assert len(ledger) == 3
    for record in ledger:
        full = (
            record.prompt_tokens * model.input_price_per_million
            + record.completion_tokens * model.output_price_per_million
        ) / Decimal(1_000_000)
        assert record.served_model == "acme-batchable"
        assert record.cost_usd == (full * Decimal("0.5")).quantize(Decimal("1e-10"))
        assert record.saved_batch_usd == record.cost_usd and record.saved_batch_usd > 0
    assert stored.saved_batch_usd == sum(record.saved_batch_usd for record in ledger)
    output = rows(openai_client, done.output_file_id)
    assert {row["response"]["request_id"] for row in output} == {record.request_id for record in ledger}
