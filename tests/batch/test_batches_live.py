"""The Batch API with the openai SDK against the live gateway and a live Celery worker."""

from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import UsageKind, UsageRecord
from billing.ratelimits import rate_limit_create
from llmops import mock_upstream as mock_upstream_module
from llmops.gateway.batches.models import Batch, BatchLine
from llmops.gateway.batches.runner import batch_process
from llmops.gateway.batches.services import line_request_id
from tenants.services import api_key_create, api_key_revoke, team_create
from tests.batch.conftest import (
    DELEGATING_PROVIDER,
    FINISHED,
    WORKER_ENV,
    celery_worker,
    chat_line,
    provider_model,
    reported_cost,
    rows,
    upload,
    wait_finished,
    wait_for,
)
from tests.factories import ModelFactory
from tests.gateway.test_routing_live import publish
from tests.gateway.test_worst_case_live import COMPRESS, long_conversation
from tests.loops import run as run_on_a_new_loop

pytestmark = pytest.mark.live


def batch_ledger(batch_id: str) -> list[UsageRecord]:
    """The batch's ledger rows: written with each line's result, so all there when the batch has finished."""
    return list(UsageRecord.objects.unscoped().filter(endpoint="/v1/batches", tags__contains=[f"batch:{batch_id}"]))


def cost_and_ledger_at_one_moment(batch_id: str) -> tuple[str, int, Decimal, Decimal]:
    """The batch's status, lines done and cost, and the sum of its ledger rows, read in one database snapshot."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        batch = Batch.objects.unscoped().get(pk=batch_id)
        ledger = UsageRecord.objects.unscoped().filter(endpoint="/v1/batches", tags__contains=[f"batch:{batch_id}"])
        total = ledger.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)
    return batch.status, batch.completed_count + batch.failed_count, batch.cost_usd, total


def sdk(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def single_attempt_worker(gateway, live_broker, files_root, monkeypatch):
    """A worker that runs each line once, so a line's first transient failure is its final answer (a retry would run
    it one by one, and succeed)."""
    monkeypatch.setitem(WORKER_ENV, "LLMOPS_BATCH_LINE_MAX_ATTEMPTS", "1")
    running = celery_worker().start()
    yield running
    running.kill()


def test_mixed_batch_completes_with_output_and_error_files(worker, openai_client, acme):
    failing = ModelFactory(name="acme-broken", provider=acme.small.provider, upstream_name="fail-400")
    from routing.services import tenant_model_access_set

    tenant_model_access_set(tenant=acme.tenant, allowed_models=[acme.small, failing], default_model=acme.small)
    lines = [
        chat_line("ok-1", "acme-small", "first question", max_tokens=5),
        chat_line("ok-2", "acme-small", "second question", user="carol"),
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
    ledger = {record.request_id: record for record in batch_ledger(batch.id)}
    assert set(ledger) == {row["response"]["request_id"] for row in [*output.values(), *errors.values()]}
    assert ledger[first["request_id"]].cost_usd > 0 and ledger[first["request_id"]].api_key_id == acme.api_key.pk
    # Each line names its own end customer, as a request does.
    assert (ledger[first["request_id"]].customer, ledger[output["ok-2"]["response"]["request_id"]].customer) == (
        "",
        "carol",
    )
    assert reported_cost(done) == sum(r.cost_usd for r in ledger.values())
    assert openai_client.files.retrieve(done.output_file_id).purpose == "batch_output"
    with pytest.raises(openai.ConflictError):
        openai_client.batches.cancel(batch.id)


def slow_batch_under_way(openai_client, acme, slow_upstream, total: int):
    """A batch of ``total`` lines on a slow model, once at least two of them have completed."""
    provider_model(slow_upstream.url, provider_name="slow-mock", model_name="acme-slow", tenant=acme)
    file_id = upload(openai_client, [chat_line(f"line-{n}", "acme-slow") for n in range(total)])
    batch = openai_client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(lambda: openai_client.batches.retrieve(batch.id).request_counts.completed >= 2)
    return batch


def test_cancel_mid_run_keeps_finished_lines_and_runs_no_more(worker, openai_client, acme, slow_upstream):
    served_before = slow_upstream.app.requests_served
    batch = slow_batch_under_way(openai_client, acme, slow_upstream, 30)

    cancelling = openai_client.batches.cancel(batch.id)
    done = wait_finished(openai_client, batch.id)

    assert cancelling.status == "cancelling"
    # Never finalizing, as OpenAI's cancelled batches.
    assert done.status == "cancelled" and done.cancelled_at and done.finalizing_at is None
    completed = done.request_counts.completed
    assert 2 <= completed < 30
    cancelled = [row for row in rows(openai_client, done.error_file_id) if row["error"]]
    assert len(cancelled) == 30 - completed and {row["error"]["code"] for row in cancelled} == {"batch_cancelled"}
    # Lines in flight when the cancel came finished; none was sent after it.
    assert slow_upstream.app.requests_served - served_before == completed
    ledger = batch_ledger(batch.id)
    assert len(ledger) == completed and reported_cost(done) == sum(r.cost_usd for r in ledger)


def test_a_run_past_its_completion_window_claims_no_more_lines_and_ends_expired(
    worker, openai_client, acme, slow_upstream
):
    """OpenAI's promise: a batch finishes within its completion window or ends ``expired``, its unrun lines failed
    ``batch_expired``. The runner holds the lease, so no recheck can stop it: each claim checks the window itself."""
    total = 30
    served_before = slow_upstream.app.requests_served
    batch = slow_batch_under_way(openai_client, acme, slow_upstream, total)

    Batch.objects.unscoped().filter(pk=batch.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    seen = []

    def finished():
        current = openai_client.batches.retrieve(batch.id)
        seen.append(current.status)
        return current.status in FINISHED and current

    done = wait_for(finished, interval=0.05)

    # No client cancelled it: never shown cancelling.
    assert set(seen) <= {"in_progress", "finalizing", "expired"}
    assert done.status == "expired" and done.expired_at and done.finalizing_at
    assert (done.cancelling_at, done.cancelled_at, done.completed_at) == (None, None, None)
    completed = done.request_counts.completed
    assert 2 <= completed < total and done.request_counts.failed == 0
    output = rows(openai_client, done.output_file_id)
    unrun = rows(openai_client, done.error_file_id)
    assert len(output) == completed and len(unrun) == total - completed
    assert {row["error"]["code"] for row in unrun} == {"batch_expired"} and {row["response"] for row in unrun} == {None}
    assert {row["custom_id"] for row in output + unrun} == {f"line-{n}" for n in range(total)}
    assert slow_upstream.app.requests_served - served_before == completed


def revoke_key(acme) -> None:
    api_key_revoke(api_key=acme.api_key)


def disable_team(acme) -> None:
    acme.team.is_active = False
    acme.team.save(update_fields=["is_active"])


@pytest.mark.parametrize(
    ("stop", "reason"), [(revoke_key, "has been revoked"), (disable_team, "belongs to a disabled tenant or team")]
)
def test_a_key_refused_mid_run_stops_the_batch_at_its_next_line(
    stop, reason, worker, gateway, openai_client, acme, slow_upstream
):
    """The kill switch holds for batches: a key revoked, or its team disabled, while its batch runs sends no line
    more; those in flight finish and are billed."""
    _, auditor_key = api_key_create(team=team_create(tenant=acme.tenant, slug="audit"), name="reads the batch")
    total = 30
    served_before = slow_upstream.app.requests_served
    batch = slow_batch_under_way(openai_client, acme, slow_upstream, total)

    stop(acme)
    served_at_stop = slow_upstream.app.requests_served
    with sdk(gateway, auditor_key) as auditor:
        done = wait_finished(auditor, batch.id)
        errors = rows(auditor, done.error_file_id)

    assert done.status == "cancelled" and done.cancelling_at and done.cancelled_at
    completed = done.request_counts.completed
    assert 2 <= completed < total and done.request_counts.failed == 0
    [why] = done.errors.data
    assert why.code == "invalid_api_key" and reason in why.message
    unrun = [row["error"] for row in errors]
    assert len(unrun) == total - completed
    assert {error["code"] for error in unrun} == {"invalid_api_key"} and all(reason in e["message"] for e in unrun)
    # At most one line per line worker was on its way when the change committed; nothing was sent after those.
    assert slow_upstream.app.requests_served - served_at_stop <= int(WORKER_ENV["LLMOPS_BATCH_TENANT_CONCURRENCY"])
    assert slow_upstream.app.requests_served - served_before == completed
    ledger = batch_ledger(batch.id)
    assert len(ledger) == completed and reported_cost(done) == sum(r.cost_usd for r in ledger)


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
    ledger = batch_ledger(batch.id)
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
    stored = Batch.objects.unscoped().get(pk=batch.id)
    assert [state["provider"] for state in stored.provider_batches.values()] == [DELEGATING_PROVIDER]
    assert set(BatchLine.objects.unscoped().filter(batch=stored).values_list("provider", flat=True)) == {
        DELEGATING_PROVIDER
    }
    ledger = batch_ledger(batch.id)
    assert len(ledger) == 3
    prices = model.price_in_force()
    for record in ledger:
        full = (
            record.prompt_tokens * prices.input_price_per_million
            + record.completion_tokens * prices.output_price_per_million
        ) / Decimal(1_000_000)
        assert record.served_model == "acme-batchable"
        assert record.cost_usd == (full * Decimal("0.5")).quantize(Decimal("1e-10"))
        assert record.saved_batch_usd == record.cost_usd and record.saved_batch_usd > 0
    assert stored.saved_batch_usd == sum(record.saved_batch_usd for record in ledger)
    output = rows(openai_client, done.output_file_id)
    assert {row["response"]["request_id"] for row in output} == {record.request_id for record in ledger}


def test_lines_at_a_provider_when_the_key_is_revoked_are_still_collected_and_billed(
    worker, gateway, openai_client, acme, mock_upstream, monkeypatch
):
    """A revoked key stops new lines; the ones a provider batch already runs are billed there (the cancel forwarded to
    it is one the mock does not know), so their answers are collected and charged to the key, and the batch ends
    instead of waiting on them for ever."""
    monkeypatch.setattr(mock_upstream_module, "BATCH_SECONDS", 3.0)  # revoked while the provider still runs it
    provider_model(mock_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    _, auditor_key = api_key_create(team=team_create(tenant=acme.tenant, slug="audit"), name="reads the batch")
    lines = [chat_line(f"d-{n}", "acme-batchable", f"summarise report {n}") for n in range(3)]
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(lambda: Batch.objects.unscoped().get(pk=batch.id).provider_batches)

    revoke_key(acme)
    with sdk(gateway, auditor_key) as auditor:
        done = wait_finished(auditor, batch.id)

    assert done.status == "cancelled" and done.request_counts.completed == 3
    ledger = batch_ledger(batch.id)
    assert len(ledger) == 3 and all(record.api_key_id == acme.api_key.pk for record in ledger)
    assert reported_cost(done) == sum(record.cost_usd for record in ledger) > 0


def test_delegated_lines_a_provider_batch_left_unanswered_fail_with_openai_error_objects(
    single_attempt_worker, openai_client, acme, mock_upstream
):
    from routing.services import tenant_model_access_set

    expiring = provider_model(
        mock_upstream.url,
        provider_name=DELEGATING_PROVIDER,
        model_name="acme-batch-expire",
        upstream_name="mock-batch-expire",
        tenant=acme,
    )
    answered = ModelFactory(name="acme-batchable", provider=expiring.provider)
    tenant_model_access_set(
        tenant=acme.tenant, allowed_models=[acme.small, expiring, answered], default_model=acme.small
    )
    served_before = mock_upstream.app.requests_served
    lines = [chat_line(f"expire-{n}", "acme-batch-expire", f"summarise report {n}") for n in range(2)]
    lines.append(chat_line("answered", "acme-batchable"))
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )

    done = wait_finished(openai_client, batch.id)

    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 1, 2)
    assert mock_upstream.app.requests_served == served_before
    assert [row["custom_id"] for row in rows(openai_client, done.output_file_id)] == ["answered"]
    errors = {row["custom_id"]: row for row in rows(openai_client, done.error_file_id)}
    assert set(errors) == {"expire-0", "expire-1"}
    for row in errors.values():
        assert row["response"]["status_code"] == 502
        assert row["response"]["body"]["error"] == {
            "message": "The provider batch ended expired.",
            "type": "api_error",
            "param": None,
            "code": "provider_expired",
        }
    ledger = {record.request_id: record for record in batch_ledger(batch.id)}
    assert len(ledger) == 3
    for row in errors.values():
        record = ledger[row["response"]["request_id"]]
        assert (record.http_status, record.error_code, record.served_model) == (
            502,
            "provider_batch_error",
            "acme-batch-expire",
        )


def delegated_one_line(openai_client, acme, mock_upstream, model_name: str, upstream_name: str):
    """A batch of one line on a model whose provider batches are delegated, and the batch once finished."""
    provider_model(
        mock_upstream.url,
        provider_name=DELEGATING_PROVIDER,
        model_name=model_name,
        upstream_name=upstream_name,
        tenant=acme,
    )
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, [chat_line("only", model_name)]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    return batch, wait_finished(openai_client, batch.id)


def test_delegated_line_the_provider_answered_with_an_error_fails_with_an_openai_error_object(
    worker, openai_client, acme, mock_upstream
):
    served_before, batch_lines_before = mock_upstream.app.requests_served, mock_upstream.app.batch_lines_served

    batch, done = delegated_one_line(openai_client, acme, mock_upstream, "acme-batch-broken", "mock-fail-400")

    assert (done.status, done.request_counts.failed) == ("completed", 1)
    assert mock_upstream.app.batch_lines_served - batch_lines_before == 1
    assert mock_upstream.app.requests_served == served_before
    [row] = rows(openai_client, done.error_file_id)
    assert row["response"]["status_code"] == 400
    # The provider's message and code, in OpenAI's four fields.
    assert row["response"]["body"]["error"] == {
        "message": "mock upstream told to fail by model mock-fail-400",
        "type": "invalid_request_error",
        "param": None,
        "code": "mock_failure",
    }
    [record] = batch_ledger(batch.id)
    assert (record.request_id, record.http_status) == (row["response"]["request_id"], 400)


def test_delegated_line_answered_200_with_no_body_fails_as_a_transient_error(
    single_attempt_worker, openai_client, acme, mock_upstream
):
    """A status of 200 without an answer is no success: the line fails (502, retried while attempts remain)."""
    batch, done = delegated_one_line(openai_client, acme, mock_upstream, "acme-batch-nobody", "mock-batch-nobody")

    assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
    assert rows(openai_client, done.output_file_id) == []
    [row] = rows(openai_client, done.error_file_id)
    assert row["response"]["status_code"] == 502
    assert row["response"]["body"]["error"]["code"] == "no_response"
    [record] = batch_ledger(batch.id)
    assert (record.http_status, record.error_code) == (502, "provider_batch_error")


def test_a_provider_result_row_that_is_not_a_json_object_fails_its_line_and_the_batch_still_finishes(
    single_attempt_worker, openai_client, acme, mock_upstream
):
    """Raising on the row would stop the merge on every later poll, and the batch would never finish."""
    batch, done = delegated_one_line(openai_client, acme, mock_upstream, "acme-batch-garbled", "mock-batch-garbled")

    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 0, 1)
    [row] = rows(openai_client, done.error_file_id)
    assert (row["custom_id"], row["response"]["status_code"]) == ("only", 502)
    assert row["response"]["body"]["error"]["code"] == "no_response"
    [record] = batch_ledger(batch.id)
    assert (record.http_status, record.error_code) == (502, "provider_batch_error")


def test_a_line_too_large_for_a_rate_limit_is_run_once(worker, openai_client, acme):
    """No minute could admit it (the gateway says x-should-retry: false): running it again would only refuse again."""
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, tokens_per_minute=3000)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/chart.png"}}
    # The catalog knows no image bound for the mock's model: the prompt counts its 128,000-token context window.
    looked_at = [{"role": "user", "content": [{"type": "text", "text": "Describe it."}, image]}]
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, [chat_line("big", "acme-small", messages=looked_at)]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )

    done = wait_finished(openai_client, batch.id)

    assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
    [row] = rows(openai_client, done.error_file_id)
    assert row["response"]["status_code"] == 429
    assert row["response"]["body"]["error"]["message"].startswith("Request too large for your key")
    assert [record.http_status for record in batch_ledger(batch.id)] == [429]


def test_batch_cost_is_the_sum_of_its_ledger_rows_at_every_moment(worker, openai_client, acme, slow_upstream):
    provider_model(slow_upstream.url, provider_name="slow-mock", model_name="acme-slow", tenant=acme)
    total = 12
    lines = [chat_line(f"line-{n}", "acme-slow", f"question {n}") for n in range(total)]
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )
    moments = []

    def observe_until(condition) -> None:
        def observed():
            moments.append(cost_and_ledger_at_one_moment(batch.id))
            return condition(*moments[-1])

        wait_for(observed, interval=0.02)

    observe_until(lambda status, done, cost, ledger: status == "in_progress" and 0 < done < total)
    observe_until(lambda status, done, cost, ledger: status == "completed")

    assert [(cost, ledger) for _, _, cost, ledger in moments if cost != ledger] == []
    final = openai_client.batches.retrieve(batch.id)
    assert reported_cost(final) == moments[-1][3] > 0 and final.request_counts.completed == total


@pytest.fixture
def undelegating_worker(gateway, live_broker, files_root, monkeypatch):
    """A worker that delegates no line, so every line is planned (and compressed) only by the run of it."""
    monkeypatch.setitem(WORKER_ENV, "LLMOPS_BATCH_DELEGATE_PROVIDERS", "")
    running = celery_worker().start()
    yield running
    running.kill()


def test_the_summaries_compressing_its_lines_are_in_the_batch_cost_when_it_ends(
    undelegating_worker, openai_client, acme
):
    """Read as the batch ends, without waiting for the ledger stream: a summary's row is written with its line's."""
    publish(acme, COMPRESS)
    lines = [chat_line(f"long-{n}", "acme-small", messages=long_conversation(), max_tokens=10) for n in range(2)]
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )

    done = wait_finished(openai_client, batch.id)

    assert (done.status, done.request_counts.completed) == ("completed", 2)
    ledger = batch_ledger(batch.id)
    summaries = [record for record in ledger if record.kind == UsageKind.COMPRESSION_SUMMARY]
    output = rows(openai_client, done.output_file_id)
    assert {record.parent_request_id for record in summaries} == {row["response"]["request_id"] for row in output}
    assert all(record.cost_usd > 0 for record in summaries)
    assert reported_cost(done) == sum(record.cost_usd for record in ledger)


def test_the_failed_attempts_a_line_fell_back_from_are_in_the_batch_cost_when_it_ends(
    worker, openai_client, acme, mock_upstream
):
    """A line whose first model answers what cannot be used, then its fallback answers: the unusable answers the
    provider may bill have rows of their own, written with the line's."""
    malformed = provider_model(
        mock_upstream.url,
        provider_name="malformed-mock",
        model_name="acme-malformed",
        tenant=acme,
        upstream_name="mock-malformed-usage-text",
    )
    rule = {
        "priority": 1,
        "name": "malformed-first",
        "match": {"requested_models": ["auto"]},
        "outcome": {"target_model": malformed.name, "fallback_models": [acme.small.name]},
    }
    publish(acme, [rule], aliases={"auto": {"small": acme.small.name, "large": acme.large.name}})
    batch = openai_client.batches.create(
        input_file_id=upload(openai_client, [chat_line("fell-back", "auto")]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )

    done = wait_finished(openai_client, batch.id)

    assert (done.status, done.request_counts.completed) == ("completed", 1)
    ledger = batch_ledger(batch.id)
    [output] = rows(openai_client, done.output_file_id)
    failed = [record for record in ledger if record.kind == UsageKind.FAILED_ATTEMPT]
    assert [(record.served_model, record.parent_request_id) for record in failed] == [
        (malformed.name, output["response"]["request_id"])
    ] * 2
    assert all(record.cost_usd > 0 for record in failed)
    assert reported_cost(done) == sum(record.cost_usd for record in ledger)


def test_a_retried_create_gets_the_same_batch_per_key_and_tenant(worker, gateway, openai_client, acme, globex):
    from tenants.services import api_key_create

    _, second_key = api_key_create(team=acme.team, name="acme second key")
    headers = {"Idempotency-Key": "nightly-2026-12-04"}
    lines = [chat_line(f"line-{n}", "acme-small", f"question {n}") for n in range(3)]
    create = {
        "input_file_id": upload(openai_client, lines),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "extra_headers": headers,
    }

    first = openai_client.batches.create(**create)
    retried = openai_client.batches.create(**create)
    with pytest.raises(openai.ConflictError) as reused:
        openai_client.batches.create(**create, metadata={"run": "another"})
    with sdk(gateway, second_key) as second_client:
        other_key = second_client.batches.create(**create)
    with sdk(gateway, globex.key) as globex_client:
        globex_file = upload(globex_client, [chat_line("only", "globex-small")])
        other_tenant = globex_client.batches.create(**{**create, "input_file_id": globex_file})
        globex_done = wait_finished(globex_client, other_tenant.id)
    done = [wait_finished(openai_client, batch_id) for batch_id in (first.id, other_key.id)]

    assert retried.id == first.id
    assert (reused.value.status_code, reused.value.code) == (409, "idempotency_key_reused")
    assert len({first.id, other_key.id, other_tenant.id}) == 3
    assert [batch.status for batch in [*done, globex_done]] == ["completed"] * 3
    assert [len(batch_ledger(batch_id)) for batch_id in (first.id, other_key.id, other_tenant.id)] == [3, 3, 1]


def test_batches_run_one_after_another_on_new_event_loops(live_broker, files_root, openai_client, acme, settings):
    """As eager mode runs batches, each on the loop of the thread that created it: a semaphore made on one loop and
    waited on from another would fail every later batch."""
    settings.LLMOPS_BATCH_PROVIDER_CONCURRENCY = 1  # the line workers wait on the provider's semaphore
    lines = [chat_line(f"line-{n}", "acme-small", f"question {n}") for n in range(4)]
    batch_ids = [
        openai_client.batches.create(
            input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(2)
    ]

    for batch_id in batch_ids:
        run_on_a_new_loop(batch_process(batch_id))

    done = [openai_client.batches.retrieve(batch_id) for batch_id in batch_ids]
    assert [(batch.status, batch.request_counts.completed) for batch in done] == [("completed", 4)] * 2
