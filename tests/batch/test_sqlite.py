"""The Batch API on the embedded default, SQLite: eager in the gateway as in ``make demo``, and with a real Celery
worker pool beside it. The gateway and the worker are child processes on their own SQLite file; the openai SDK
drives them over HTTP."""

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest
from django.conf import settings

from tests.batch.conftest import chat_line, reported_cost, rows, upload, wait_finished, wait_for
from tests.batch.sqlite_site import sqlite_site_start, sqlite_template

pytestmark = pytest.mark.live
ENDPOINT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def seeded_sqlite(tmp_path_factory, mock_upstream, slow_upstream):
    return sqlite_template(
        tmp_path_factory.mktemp("sqlite-template"), mock_url=mock_upstream.url, slow_url=slow_upstream.url
    )


@pytest.fixture(scope="module")
def eager_site(seeded_sqlite, tmp_path_factory):
    """One gateway for the module's eager tests; each looks only at its own batches."""
    site = sqlite_site_start(*seeded_sqlite, tmp_path_factory.mktemp("eager-site"))
    yield site
    site.stop()


@pytest.fixture
def worker_site(seeded_sqlite, tmp_path):
    """Gateway and a two-process worker pool on one SQLite file, the test Redis as the broker only."""
    assert settings.REDIS_URL, "this test needs TEST_REDIS_URL for the broker"
    site = sqlite_site_start(*seeded_sqlite, tmp_path, broker=settings.REDIS_URL, workers=2)
    yield site
    site.stop()


def assert_reconcile(site, *batches) -> None:
    """Each batch's reported cost is the sum of its ledger rows, one row per line run."""
    ledger = site.ledger(*(batch.id for batch in batches))
    for batch in batches:
        assert ledger[batch.id]["rows"] == batch.request_counts.completed + batch.request_counts.failed
        assert reported_cost(batch) == Decimal(ledger[batch.id]["cost_usd"]) > 0


def test_batches_complete_one_after_another_in_eager_mode(eager_site, mock_upstream):
    served_before = mock_upstream.app.requests_served
    with eager_site.client() as client:
        finished = []
        for run in range(2):
            lines = [chat_line(f"run{run}-{n}", "acme-small", f"question {n} of run {run}") for n in range(8)]
            batch = client.batches.create(
                input_file_id=upload(client, lines), endpoint=ENDPOINT, completion_window="24h"
            )
            finished.append(wait_finished(client, batch.id))

        for run, done in enumerate(finished):
            assert done.status == "completed"
            assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (8, 8, 0)
            output = rows(client, done.output_file_id)
            assert sorted(row["custom_id"] for row in output) == sorted(f"run{run}-{n}" for n in range(8))
            assert {row["response"]["status_code"] for row in output} == {200}
    assert_reconcile(eager_site, *finished)
    assert mock_upstream.app.requests_served - served_before == 16


def test_a_create_retried_with_its_idempotency_key_runs_the_batch_once(eager_site, mock_upstream):
    served_before = mock_upstream.app.requests_served
    headers = {"Idempotency-Key": "nightly-2026-12-04"}
    with eager_site.client() as client:
        create = {
            "input_file_id": upload(client, [chat_line(f"line-{n}", "acme-small", f"question {n}") for n in range(3)]),
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "extra_headers": headers,
        }
        first = client.batches.create(**create)
        retried = client.batches.create(**create)
        with pytest.raises(openai.ConflictError) as reused:
            client.batches.create(**create, metadata={"run": "another"})
        same_file = [batch.id for batch in client.batches.list() if batch.input_file_id == create["input_file_id"]]
        done = wait_finished(client, first.id)

    assert retried.id == first.id and same_file == [first.id]
    assert reused.value.code == "idempotency_key_reused"
    assert done.status == "completed" and done.request_counts.completed == 3
    assert_reconcile(eager_site, done)
    assert mock_upstream.app.requests_served - served_before == 3


def test_cancel_in_eager_mode_ends_cancelled_and_sends_no_more_lines(eager_site, slow_upstream):
    served_before = slow_upstream.app.requests_served
    total = 40
    with eager_site.client() as client, ThreadPoolExecutor(max_workers=1) as background:
        file_id = upload(client, [chat_line(f"line-{n}", "acme-slow", f"question {n}") for n in range(total)])
        # In eager mode the create answers once the batch has run: it runs in the background while the test cancels.
        creating = background.submit(
            client.batches.create, input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h"
        )
        running = wait_for(
            lambda: next(
                (b for b in client.batches.list() if b.input_file_id == file_id and b.request_counts.completed >= 2),
                None,
            )
        )
        cancelling = client.batches.cancel(running.id)
        done = wait_finished(client, running.id)
        created = creating.result(timeout=30)
        cancelled = [row for row in rows(client, done.error_file_id) if row["error"]]

    assert created.id == running.id
    assert cancelling.status == "cancelling"
    assert done.status == "cancelled" and done.cancelled_at
    completed = done.request_counts.completed
    assert 2 <= completed < total
    assert len(cancelled) == total - completed
    assert {row["error"]["code"] for row in cancelled} == {"batch_cancelled"}
    assert slow_upstream.app.requests_served - served_before == completed
    assert_reconcile(eager_site, done)


def test_batches_complete_with_a_real_worker_on_sqlite(worker_site, mock_upstream):
    served_before = mock_upstream.app.requests_served
    with worker_site.client() as client:
        created = [
            client.batches.create(
                input_file_id=upload(client, [chat_line(f"b{run}-{n}", "acme-small", f"q {n}") for n in range(8)]),
                endpoint=ENDPOINT,
                completion_window="24h",
            )
            for run in range(2)
        ]
        finished = [wait_finished(client, batch.id, timeout=60) for batch in created]

        for done in finished:
            assert done.status == "completed" and done.request_counts.completed == 8
            assert len(rows(client, done.output_file_id)) == 8
    assert_reconcile(worker_site, *finished)
    assert mock_upstream.app.requests_served - served_before == 16
