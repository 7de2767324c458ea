"""Lines delegated to a provider's batch endpoint, against the live gateway and a live Celery worker (or batches run
in this process): the budgets they are held to while the provider runs them, the budgets of their end customers, a
provider whose batches cannot be polled, and what compressing them costs."""

import time
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import httpx
import orjson
import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_counter_check, budget_create
from billing.models import Budget, BudgetScope, UsageKind, UsageRecord
from llmops import mock_upstream as mock_upstream_module
from llmops.gateway.batches import delegation
from llmops.gateway.batches.models import Batch
from llmops.gateway.batches.runner import batch_process
from llmops.gateway.batches.services import line_request_id
from llmops.mock_upstream import BATCH_PATH, MockUpstream
from routing.services import tenant_model_access_set
from tests.batch.conftest import DELEGATING_PROVIDER, chat_line, provider_model, reported_cost, rows, upload, wait_for
from tests.batch.test_batches_live import batch_ledger, wait_finished
from tests.factories import ModelFactory
from tests.gateway.test_routing_live import publish
from tests.gateway.test_worst_case_live import COMPRESS, long_conversation
from tests.loops import run as run_on_a_new_loop
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
    """The mock upstream, except that while ``failing`` a look at a batch (``GET /v1/batches/{id}``) answers 503, and
    while ``refusing`` the creation of a batch (``POST /v1/batches``) does."""

    def __init__(self):
        self.upstream = MockUpstream()
        self.failing = True
        self.refusing = False
        self.polls_failed = 0
        self.cancels = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/cancel"):
            self.cancels += 1
        polled = scope["type"] == "http" and scope["method"] == "GET" and BATCH_PATH.fullmatch(scope["path"])
        created = scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/batches"
        if (polled and self.failing) or (created and self.refusing):
            self.polls_failed += bool(polled)
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


def live_request(gateway, acme, text: str) -> httpx.Response:
    body = {"model": "acme-small", "messages": [{"role": "user", "content": text}], "max_tokens": 24}
    headers = {"Authorization": f"Bearer {acme.key}"}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=20)


def tenant_spend(acme) -> Decimal:
    records = UsageRecord.objects.unscoped().filter(tenant=acme.tenant)
    return records.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)


def team_day_budget(acme, limit: str) -> Budget:
    return budget_create(
        tenant=acme.tenant, scope=BudgetScope.TEAM, team=acme.team, period="day", limit_usd=Decimal(limit)
    )


def test_a_blocking_budget_holds_the_lines_a_provider_runs_until_their_answers_are_merged(
    worker, gateway, openai_client, acme, failing_polls
):
    """Four lines at the provider (whose batch cannot be polled yet) hold their worst case at the batch price, about
    0.000032 USD of the team's 0.0001 a day, until their answers are merged: live requests of about 0.000016 USD each
    are refused once what is left cannot hold one more, so the answers merged later land within the limit, and the
    counter then counts the ledger's spend and holds nothing."""
    provider_model(failing_polls.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget = team_day_budget(acme, "0.0001")
    lines = [chat_line(f"d-{n}", "acme-batchable", f"summarise report {n}", max_tokens=24) for n in range(4)]
    batch_id = create(openai_client, lines)
    wait_for(lambda: failing_polls.app.polls_failed >= 1)
    held = budget_status(budget=budget, now=timezone.now()).reserved_usd

    answers = [live_request(gateway, acme, f"question {n} about {topic}") for n, topic in enumerate(TOPICS)]
    failing_polls.app.failing = False
    done = wait_finished(openai_client, batch_id)

    statuses = [answer.status_code for answer in answers]
    assert 200 in statuses and 429 in statuses
    assert {answer.json()["error"]["code"] for answer in answers if answer.status_code == 429} == {"budget_exceeded"}
    assert (done.status, done.request_counts.completed) == ("completed", 4)
    assert tenant_spend(acme) <= budget.limit_usd
    assert held >= sum(record.cost_usd for record in batch_ledger(batch_id)) > 0
    check = budget_counter_check(budget=budget, now=timezone.now())
    assert check.counted_usd == check.ledger_usd == tenant_spend(acme)
    assert budget_status(budget=budget, now=timezone.now()).reserved_usd == 0


TOPICS = ["tides", "volcanoes", "bread", "chess", "glaciers", "violins", "comets", "bees", "copper", "sailing"]


@pytest.fixture
def batches_here(live_broker, files_root, settings):
    """Batches run in this process (batch_process), delegating to DELEGATING_PROVIDER."""
    settings.LLMOPS_BATCH_DELEGATE_PROVIDERS = [DELEGATING_PROVIDER]


def counters_in(settings, backend: str) -> None:
    """Budget counters in Redis, or in BudgetCounter rows as without Redis; the gateway is not called after this."""
    if backend == "database":
        settings.REDIS_URL = ""


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_delegated_lines_hold_their_worst_case_until_merged_and_are_then_charged_what_was_billed(
    batches_here, settings, openai_client, acme, mock_upstream, backend
):
    """The provider bills the line it answered: its reservation is replaced by its cost. It bills nothing for the
    line it refused (400): that one's is released."""
    batchable = provider_model(
        mock_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme
    )
    broken = ModelFactory(name="acme-batch-broken", provider=batchable.provider, upstream_name="fail-400")
    allowed = [acme.small, batchable, broken]
    tenant_model_access_set(tenant=acme.tenant, allowed_models=allowed, default_model=acme.small)
    budget = team_day_budget(acme, "1")
    lines = [chat_line("answered", "acme-batchable", max_tokens=24), chat_line("refused", "acme-batch-broken")]
    batch_id = create(openai_client, lines)
    counters_in(settings, backend)

    run_on_a_new_loop(batch_process(batch_id))  # submits the lines
    submitted = budget_status(budget=budget, now=timezone.now())
    time.sleep(mock_upstream_module.BATCH_SECONDS)  # the provider's batch has ended
    run_on_a_new_loop(batch_process(batch_id))  # merges its results

    batch = Batch.objects.unscoped().get(pk=batch_id)
    assert (batch.status, batch.completed_count, batch.failed_count) == ("completed", 1, 1)
    billed = {record.request_id: record.cost_usd for record in batch_ledger(batch_id)}
    assert len(billed) == 2 and sorted(billed.values())[0] == 0
    assert submitted.spent_usd == 0 and submitted.reserved_usd > sum(billed.values()) > 0
    now = timezone.now()
    check = budget_counter_check(budget=budget, now=now)
    assert check.counted_usd == check.ledger_usd == sum(billed.values())
    assert budget_status(budget=budget, now=now).reserved_usd == 0


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_a_provider_batch_given_up_releases_what_its_lines_hold(
    batches_here, settings, openai_client, acme, failing_polls, backend
):
    provider_model(failing_polls.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget = team_day_budget(acme, "1")
    batch_id = create(openai_client, [chat_line(f"d-{n}", "acme-batchable", max_tokens=24) for n in range(2)])
    counters_in(settings, backend)

    run_on_a_new_loop(batch_process(batch_id))
    held = budget_status(budget=budget, now=timezone.now()).reserved_usd
    out_of_time(batch_id)
    run_on_a_new_loop(batch_process(batch_id))

    assert Batch.objects.unscoped().get(pk=batch_id).status == "expired"
    assert held > 0
    after = budget_status(budget=budget, now=timezone.now())
    assert (after.spent_usd, after.reserved_usd) == (0, 0)


def test_lines_a_provider_refuses_to_take_are_run_here_holding_nothing_for_it(
    batches_here, openai_client, acme, failing_polls
):
    failing_polls.app.refusing = True
    provider_model(failing_polls.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget = team_day_budget(acme, "1")
    batch_id = create(openai_client, [chat_line(f"d-{n}", "acme-batchable", max_tokens=24) for n in range(2)])

    run_on_a_new_loop(batch_process(batch_id))

    batch = Batch.objects.unscoped().get(pk=batch_id)
    assert (batch.status, batch.completed_count, batch.provider_batches) == ("completed", 2, {})
    now = timezone.now()
    check = budget_counter_check(budget=budget, now=now)
    assert check.counted_usd == check.ledger_usd == sum(record.cost_usd for record in batch_ledger(batch_id)) > 0
    assert budget_status(budget=budget, now=now).reserved_usd == 0


def test_an_answer_merged_in_the_budget_s_next_period_is_charged_there_and_released_where_it_was_held(
    batches_here, gateway, openai_client, acme, mock_upstream, monkeypatch
):
    """A daily budget: the line was sent yesterday, its answer is merged (and its ledger row written) today, after a
    live request of today's."""
    provider_model(mock_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget = team_day_budget(acme, "1")
    batch_id = create(openai_client, [chat_line("d", "acme-batchable", max_tokens=24)])
    yesterday = timezone.now() - timedelta(days=1)
    with monkeypatch.context() as clock:
        clock.setattr(delegation, "timezone", SimpleNamespace(now=lambda: yesterday))
        run_on_a_new_loop(batch_process(batch_id))
    held = budget_status(budget=budget, now=yesterday).reserved_usd
    assert live_request(gateway, acme, "question about tides").status_code == 200
    time.sleep(mock_upstream_module.BATCH_SECONDS)
    run_on_a_new_loop(batch_process(batch_id))

    [record] = batch_ledger(batch_id)
    assert held >= record.cost_usd > 0
    today = budget_counter_check(budget=budget, now=timezone.now())
    assert today.counted_usd == today.ledger_usd == tenant_spend(acme) > record.cost_usd
    then = budget_counter_check(budget=budget, now=yesterday)
    assert then.counted_usd == then.ledger_usd == 0
    assert budget_status(budget=budget, now=yesterday).reserved_usd == 0
