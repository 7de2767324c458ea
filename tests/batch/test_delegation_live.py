"""Lines delegated to a provider's batch endpoint, against the live gateway and a live Celery worker: the budgets of
their end customers, a provider whose batches cannot be polled, and what compressing them costs."""

from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from django.utils import timezone

from billing.budgets.services import budget_create
from billing.models import BudgetScope, UsageKind, UsageRecord
from llmops.gateway.batches.models import Batch
from llmops.gateway.batches.services import line_request_id
from llmops.mock_upstream import BATCH_PATH, MockUpstream
from tests.batch.conftest import DELEGATING_PROVIDER, chat_line, provider_model, reported_cost, rows, upload, wait_for
from tests.batch.test_batches_live import batch_ledger, wait_finished
from tests.gateway.test_routing_live import publish
from tests.gateway.test_worst_case_live import COMPRESS, long_conversation
from tests.servers import ThreadedServer

pytestmark = pytest.mark.live


def create(openai_client, lines: list) -> str:
    return openai_client.batches.create(
        input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def test_a_delegated_line_its_customers_budget_cannot_hold_fails_as_the_gateway_would_refuse_it(
    worker, openai_client, acme, mock_upstream
):
    """Each end customer is held to a budget of 0.002 USD. A line without max_tokens has a worst case of about
    0.00123 USD at the batch price (4,096 answer tokens at half of 0.60 USD per million): carol's first line fits,
    her second does not, dave's fits in his own; a line naming no customer is held to no customer's budget."""
    provider_model(mock_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget_create(tenant=acme.tenant, scope=BudgetScope.CUSTOMER, limit_usd=Decimal("0.002"))
    batch_lines_before = mock_upstream.app.batch_lines_served
    lines = [
        chat_line("carol-1", "acme-batchable", "first", user="carol"),
        chat_line("carol-2", "acme-batchable", "second", user="carol"),
        chat_line("dave", "acme-batchable", "third", user="dave"),
        chat_line("nobody", "acme-batchable", "fourth"),
    ]
    batch_id = create(openai_client, lines)

    done = wait_finished(openai_client, batch_id)

    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 3, 1)
    assert mock_upstream.app.batch_lines_served - batch_lines_before == 3
    assert {row["custom_id"] for row in rows(openai_client, done.output_file_id)} == {"carol-1", "dave", "nobody"}
    [refused] = rows(openai_client, done.error_file_id)
    assert (refused["custom_id"], refused["response"]["status_code"]) == ("carol-2", 429)
    error = refused["response"]["body"]["error"]
    assert (error["code"], error["type"], error["param"]) == ("budget_exceeded", "insufficient_quota", None)
    assert "customer 'carol'" in error["message"]
    ledger = {record.request_id: record for record in batch_ledger(batch_id)}
    record = ledger[refused["response"]["request_id"]]
    assert (record.http_status, record.error_code, record.customer, record.cost_usd) == (
        429,
        "budget_exceeded",
        "carol",
        0,
    )
    assert reported_cost(done) == sum(record.cost_usd for record in ledger.values()) > 0


class PollsFail:
    """The mock upstream, except that while ``failing`` a look at a batch (``GET /v1/batches/{id}``) answers 503."""

    def __init__(self):
        self.upstream = MockUpstream()
        self.failing = True
        self.polls_failed = 0
        self.cancels = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/cancel"):
            self.cancels += 1
        polled = scope["type"] == "http" and scope["method"] == "GET" and BATCH_PATH.fullmatch(scope["path"])
        if polled and self.failing:
            self.polls_failed += 1
            body = orjson.dumps({"error": {"message": "Service unavailable.", "type": "server_error"}})
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.upstream(scope, receive, send)


@pytest.fixture
def failing_polls():
    app = PollsFail()
    with ThreadedServer(app) as server:
        server.app = app
        yield server


def out_of_time(batch_id: str) -> None:
    Batch.objects.unscoped().filter(pk=batch_id).update(expires_at=timezone.now() - timedelta(seconds=1))


def test_a_provider_batch_that_cannot_be_polled_ends_the_batch_expired_when_its_window_ends(
    worker, openai_client, acme, failing_polls
):
    """Failing polls are retried until the batch's completion window is over; then the provider batch is given up
    (and cancelled there, should that still get through), its lines end unrun with the reason, and the batch ends
    expired saying why. The line the gateway ran itself is kept and billed."""
    provider_model(failing_polls.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    lines = [chat_line(f"d-{n}", "acme-batchable", f"summarise report {n}") for n in range(2)]
    batch_id = create(openai_client, [*lines, chat_line("own", "acme-small")])
    wait_for(lambda: failing_polls.app.polls_failed >= 2)
    running = wait_for(lambda: (b := openai_client.batches.retrieve(batch_id)).request_counts.completed == 1 and b)
    assert running.status == "in_progress"

    out_of_time(batch_id)
    done = wait_finished(openai_client, batch_id)

    assert done.status == "expired" and done.expired_at and done.completed_at is None
    [why] = done.errors.data
    assert why.code == "provider_batch_unreachable" and "HTTP 503" in why.message
    assert [row["custom_id"] for row in rows(openai_client, done.output_file_id)] == ["own"]
    unrun = {row["custom_id"]: row for row in rows(openai_client, done.error_file_id)}
    assert set(unrun) == {"d-0", "d-1"} and {row["response"] for row in unrun.values()} == {None}
    assert {row["error"]["code"] for row in unrun.values()} == {"provider_batch_unreachable"}
    assert failing_polls.app.cancels == 1
    ledger = batch_ledger(batch_id)
    assert len(ledger) == 1 and reported_cost(done) == ledger[0].cost_usd > 0


def test_a_provider_batch_polled_again_once_it_answers_is_collected_and_billed(
    worker, openai_client, acme, failing_polls
):
    """Answers the provider gives once it is reachable again are merged and billed, even past the window's end."""
    provider_model(failing_polls.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    batch_id = create(openai_client, [chat_line(f"d-{n}", "acme-batchable", f"summarise report {n}") for n in range(2)])
    wait_for(lambda: failing_polls.app.polls_failed >= 2)
    assert openai_client.batches.retrieve(batch_id).status == "in_progress"

    failing_polls.app.failing = False
    done = wait_finished(openai_client, batch_id)

    assert (done.status, done.request_counts.completed, done.errors) == ("completed", 2, None)
    assert failing_polls.app.cancels == 0
    ledger = batch_ledger(batch_id)
    assert len(ledger) == 2 and reported_cost(done) == sum(record.cost_usd for record in ledger) > 0


def test_the_summary_compressing_a_delegated_line_is_a_ledger_row_of_the_batch_and_in_its_cost(
    worker, openai_client, acme, mock_upstream
):
    provider_model(mock_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    publish(acme, COMPRESS)
    batch_id = create(openai_client, [chat_line("long", "acme-batchable", messages=long_conversation(), max_tokens=10)])

    done = wait_finished(openai_client, batch_id)

    assert (done.status, done.request_counts.completed) == ("completed", 1)
    [row] = rows(openai_client, done.output_file_id)
    assert row["response"]["request_id"] == line_request_id(batch_id=batch_id, custom_id="long", attempt=0)
    ledger = batch_ledger(batch_id)
    [summary] = [record for record in ledger if record.kind == UsageKind.COMPRESSION_SUMMARY]
    assert summary.parent_request_id == row["response"]["request_id"] and summary.cost_usd > 0
    assert summary.served_model == acme.small.name
    assert reported_cost(done) == sum(record.cost_usd for record in ledger)
    assert UsageRecord.objects.unscoped().filter(tenant=acme.tenant).count() == len(ledger) == 2
