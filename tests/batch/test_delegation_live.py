"""Lines delegated to a provider's batch endpoint, against the live gateway and a live Celery worker (or batches run
in this process): the budgets they are held to while the provider runs them, the budgets of their end customers, a
provider whose batches cannot be polled, and what compressing them costs."""

import re
import time
from collections.abc import Callable
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
from llmops.gateway.batches.models import Batch, BatchLine
from llmops.gateway.batches.runner import batch_process
from llmops.gateway.batches.services import line_request_id
from llmops.mock_upstream import BATCH_PATH, FILE_PATH, MockUpstream
from routing.services import tenant_model_access_set
from tests.batch.conftest import DELEGATING_PROVIDER, chat_line, provider_model, reported_cost, rows, upload, wait_for
from tests.batch.test_batches_live import batch_ledger, wait_finished
from tests.factories import ModelFactory
from tests.gateway.test_routing_live import publish
from tests.gateway.test_worst_case_live import COMPRESS, long_conversation
from tests.loops import run as run_on_a_new_loop
from tests.servers import serving

pytestmark = pytest.mark.live


def submit_then_merge(batch_id: str) -> None:
    """One pass of the runner that submits the batch's lines to the provider, then, once its batch has ended, one that
    merges the results."""
    run_on_a_new_loop(batch_process(batch_id))
    time.sleep(mock_upstream_module.BATCH_SECONDS)
    run_on_a_new_loop(batch_process(batch_id))


def assert_charged_and_released(budget, charged) -> None:
    """The budget's counter holds what the ledger charged it, which is ``charged``, and nothing is still reserved."""
    now = timezone.now()
    check = budget_counter_check(budget=budget, now=now)
    assert check.counted_usd == check.ledger_usd == charged
    assert budget_status(budget=budget, now=now).reserved_usd == 0


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


async def send_answer(send, body: bytes, *, status: int = 200, content_type: bytes = b"json") -> None:
    """A test server's whole answer to the request it is sent."""
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})


class ChangesBatchAnswers:
    """The mock upstream, whose batch output files hold each answer as ``change(custom_id, answer)`` leaves it."""

    def __init__(self, change: Callable[[str, dict], None]):
        self.upstream = MockUpstream()
        self.change = change

    async def __call__(self, scope, receive, send):
        read = scope["type"] == "http" and scope["method"] == "GET" and FILE_PATH.fullmatch(scope["path"])
        if not read or read.group(1) not in self.upstream.files:
            await self.upstream(scope, receive, send)
            return
        rows = [orjson.loads(row) for row in self.upstream.files[read.group(1)].splitlines() if row.strip()]
        for row in rows:
            answer = (row.get("response") or {}).get("body")
            if isinstance(answer, dict):
                self.change(row["custom_id"], answer)
        await send_answer(send, b"".join(orjson.dumps(row) + b"\n" for row in rows), content_type=b"jsonl")


class PollsFail:
    """The mock upstream, except that while ``failing`` (True, or the set of the batch ids that fail) a look at a batch
    (``GET /v1/batches/{id}``) answers 503, and while ``refusing`` the creation of a batch (``POST /v1/batches``)
    does."""

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
        failing = polled and (polled.group(1) in self.failing if isinstance(self.failing, set) else self.failing)
        if failing or (created and self.refusing):
            self.polls_failed += bool(polled)
            body = orjson.dumps({"error": {"message": "Service unavailable.", "type": "server_error"}})
            await send_answer(send, body, status=503)
            return
        await self.upstream(scope, receive, send)


@pytest.fixture
def failing_polls():
    yield from serving(PollsFail())


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
    assert_charged_and_released(budget, sum(billed.values()))


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
    charged = sum(record.cost_usd for record in batch_ledger(batch_id))
    assert charged > 0
    assert_charged_and_released(budget, charged)


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


def two_models(upstream_url: str, acme) -> None:
    """acme-batchable (upstream model mock-small) and acme-batchable-mini (mock-mini), of the delegating provider."""
    batchable = provider_model(
        upstream_url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme
    )
    mini = ModelFactory(name="acme-batchable-mini", provider=batchable.provider, upstream_name="mock-mini")
    tenant_model_access_set(tenant=acme.tenant, allowed_models=[acme.small, batchable, mini], default_model=acme.small)


def submitted_models(app: MockUpstream, remote_ids: list[str]) -> list[set[str]]:
    """The models named in the input file of each of these batches of the mock upstream."""
    files = [app.files[app.batches[remote_id]["input_file_id"]] for remote_id in remote_ids]
    return [{orjson.loads(row)["body"]["model"] for row in content.splitlines() if row.strip()} for content in files]


def test_lines_for_two_models_of_one_provider_go_in_a_provider_batch_each(
    batches_here, openai_client, acme, mock_upstream
):
    """OpenAI's Batch API takes one model per input file: one provider batch per upstream model."""
    two_models(mock_upstream.url, acme)
    earlier = set(mock_upstream.app.batches)
    models = ("acme-batchable", "acme-batchable-mini")
    batch_id = create(
        openai_client, [chat_line(f"{model}-{n}", model, max_tokens=24) for n in range(2) for model in models]
    )

    run_on_a_new_loop(batch_process(batch_id))
    submitted = [remote_id for remote_id in mock_upstream.app.batches if remote_id not in earlier]
    time.sleep(mock_upstream_module.BATCH_SECONDS)
    run_on_a_new_loop(batch_process(batch_id))

    assert sorted(submitted_models(mock_upstream.app, submitted), key=sorted) == [{"mock-mini"}, {"mock-small"}]
    batch = Batch.objects.unscoped().get(pk=batch_id)
    assert (batch.status, batch.completed_count) == ("completed", 4)
    states = batch.provider_batches.values()
    assert sorted((state["provider"], state["model"]) for state in states) == [
        (DELEGATING_PROVIDER, "mock-mini"),
        (DELEGATING_PROVIDER, "mock-small"),
    ]
    assert sorted(record.served_model for record in batch_ledger(batch_id)) == sorted(models * 2)


def test_a_provider_batch_given_up_ends_its_own_lines_only(batches_here, openai_client, acme, failing_polls):
    """Of two provider batches of one provider, the one still unreachable when the window ends is given up: its lines
    end unrun, giving back what they hold; the other's answers are merged and billed."""
    failing_polls.app.failing = False
    two_models(failing_polls.url, acme)
    budget = team_day_budget(acme, "1")
    # The mini lines first: their provider batch is polled, and given up, before the other is merged.
    models = ("acme-batchable-mini", "acme-batchable")
    batch_id = create(
        openai_client, [chat_line(f"{model}-{n}", model, max_tokens=24) for model in models for n in range(2)]
    )
    run_on_a_new_loop(batch_process(batch_id))
    states = Batch.objects.unscoped().get(pk=batch_id).provider_batches.values()
    failing_polls.app.failing = {state["batch_id"] for state in states if state["model"] == "mock-mini"}
    time.sleep(mock_upstream_module.BATCH_SECONDS)

    out_of_time(batch_id)
    run_on_a_new_loop(batch_process(batch_id))

    assert Batch.objects.unscoped().get(pk=batch_id).status == "expired"
    ended = dict(BatchLine.objects.unscoped().filter(batch_id=batch_id).values_list("custom_id", "status"))
    assert ended == {
        "acme-batchable-mini-0": "cancelled",
        "acme-batchable-mini-1": "cancelled",
        "acme-batchable-0": "succeeded",
        "acme-batchable-1": "succeeded",
    }
    charged = sum(record.cost_usd for record in batch_ledger(batch_id))
    assert charged > 0
    assert_charged_and_released(budget, charged)


CANCEL_PATH = re.compile(r"/v1/batches/([\w-]+)/cancel")


class CancelsBatches:
    """The mock upstream, whose batches a cancel (``POST /v1/batches/{id}/cancel``) stops: reported ``cancelling``,
    then, once ``cancels_end``, ``cancelled`` with none of their lines answered."""

    def __init__(self):
        self.upstream = MockUpstream()
        self.cancelled: list[str] = []
        self.cancels_end = False

    async def __call__(self, scope, receive, send):
        cancel = scope["type"] == "http" and scope["method"] == "POST" and CANCEL_PATH.fullmatch(scope["path"])
        polled = scope["type"] == "http" and scope["method"] == "GET" and BATCH_PATH.fullmatch(scope["path"])
        if cancel:
            self.cancelled.append(cancel.group(1))
        if cancel or (polled and polled.group(1) in self.cancelled):
            status = "cancelled" if polled and self.cancels_end else "cancelling"
            state = {"id": (cancel or polled).group(1), "object": "batch", "status": status}
            body = orjson.dumps({**state, "output_file_id": None, "error_file_id": None})
            await send_answer(send, body)
            return
        await self.upstream(scope, receive, send)


@pytest.fixture
def cancelling_provider():
    yield from serving(CancelsBatches())


def test_a_cancel_is_forwarded_once_to_the_provider_batch_which_then_bills_nothing(
    batches_here, openai_client, acme, cancelling_provider
):
    """Else the provider runs, and bills, every line it holds while the batch waits in cancelling for it."""
    provider_model(cancelling_provider.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget = team_day_budget(acme, "1")
    batch_id = create(openai_client, [chat_line(f"d-{n}", "acme-batchable", max_tokens=24) for n in range(2)])
    run_on_a_new_loop(batch_process(batch_id))  # submits the lines

    openai_client.batches.cancel(batch_id)
    run_on_a_new_loop(batch_process(batch_id))  # forwards the cancel
    run_on_a_new_loop(batch_process(batch_id))  # the provider batch is still cancelling: nothing sent again
    cancelling_provider.app.cancels_end = True
    run_on_a_new_loop(batch_process(batch_id))  # merges the provider batch, cancelled

    [state] = Batch.objects.unscoped().get(pk=batch_id).provider_batches.values()
    assert cancelling_provider.app.cancelled == [state["batch_id"]]
    done = openai_client.batches.retrieve(batch_id)
    assert (done.status, done.request_counts.completed, done.finalizing_at) == ("cancelled", 0, None)
    assert {row["error"]["code"] for row in rows(openai_client, done.error_file_id)} == {"batch_cancelled"}
    assert sum(record.cost_usd for record in batch_ledger(batch_id)) == 0
    assert budget_status(budget=budget, now=timezone.now()).reserved_usd == 0


# What a provider batch reports as the usage of the line of this custom_id, where the synchronous path would refuse
# it: max_tokens 24 makes more than 96 completion tokens unbelievable.
SPOILED_USAGE = {
    "text": {"prompt_tokens": "n/a"},
    "details": {"prompt_tokens_details": []},
    "negative": {"completion_tokens": -5},
    "absurd": {"completion_tokens": 10**12},
    "over-ceiling": {"completion_tokens": 5_000},
}
# The line of this custom_id comes back answered but without usage.
UNMETERED = "unmetered"


def spoil_usage(custom_id: str, answer: dict) -> None:
    """Reports the usage SPOILED_USAGE names for the line of ``custom_id``, and none for the UNMETERED line."""
    if custom_id in SPOILED_USAGE:
        answer["usage"] = {**answer["usage"], **SPOILED_USAGE[custom_id]}
    if custom_id == UNMETERED:
        del answer["usage"]


@pytest.fixture
def spoiled_usage():
    yield from serving(ChangesBatchAnswers(spoil_usage))


def test_a_provider_answer_whose_usage_cannot_be_believed_fails_its_line_and_the_others_are_merged(
    batches_here, settings, openai_client, acme, spoiled_usage
):
    """As the synchronous path treats such an answer: unusable (502), charged the gateway's own count of it; never a
    stop of the merge, a refund, or a bill of a trillion tokens."""
    settings.LLMOPS_BATCH_LINE_MAX_ATTEMPTS = 1
    provider_model(spoiled_usage.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget = team_day_budget(acme, "1")
    custom_ids = [*SPOILED_USAGE, "good"]
    batch_id = create(
        openai_client, [chat_line(custom_id, "acme-batchable", max_tokens=24) for custom_id in custom_ids]
    )

    submit_then_merge(batch_id)

    batch = Batch.objects.unscoped().get(pk=batch_id)
    assert (batch.status, batch.completed_count, batch.failed_count) == ("completed", 1, len(SPOILED_USAGE))
    lines = {line.custom_id: line for line in BatchLine.objects.unscoped().filter(batch_id=batch_id)}
    ledger = {record.request_id: record for record in batch_ledger(batch_id)}
    for custom_id in SPOILED_USAGE:
        line, record = lines[custom_id], ledger[lines[custom_id].request_id]
        assert (line.status_code, line.response_body["error"]["code"]) == (502, "upstream_invalid_response")
        assert (record.http_status, record.usage_estimated, record.completion_tokens <= 24) == (502, True, True)
        assert 0 < record.cost_usd < ledger[lines["good"].request_id].cost_usd * 2
    assert lines["good"].status_code == 200
    assert_charged_and_released(budget, sum(record.cost_usd for record in ledger.values()))


def test_a_provider_answer_without_usage_is_charged_the_gateway_s_own_count(
    batches_here, openai_client, acme, spoiled_usage
):
    """As the synchronous path charges such an answer: the provider billed it, so it is not free."""
    provider_model(spoiled_usage.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    budget = team_day_budget(acme, "1")
    batch_id = create(openai_client, [chat_line(custom_id, "acme-batchable") for custom_id in (UNMETERED, "good")])

    submit_then_merge(batch_id)

    lines = {line.custom_id: line for line in BatchLine.objects.unscoped().filter(batch_id=batch_id)}
    ledger = {record.request_id: record for record in batch_ledger(batch_id)}
    unmetered, good = ledger[lines[UNMETERED].request_id], ledger[lines["good"].request_id]
    assert (lines[UNMETERED].status_code, unmetered.http_status, unmetered.usage_estimated) == (200, 200, True)
    assert unmetered.prompt_tokens > 0 and unmetered.completion_tokens > 0 and unmetered.cost_usd > 0
    assert good.usage_estimated is False
    assert_charged_and_released(budget, unmetered.cost_usd + good.cost_usd)


class AnswersAList:
    """The mock upstream, except that it answers the creation of a batch with a JSON array, not a batch object."""

    def __init__(self):
        self.upstream = MockUpstream()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/batches":
            await send_answer(send, b'[{"id": "batch_listed"}]')
            return
        await self.upstream(scope, receive, send)


@pytest.fixture
def list_answering():
    yield from serving(AnswersAList())


def test_a_provider_answering_a_submission_unreadably_leaves_the_batch_submitted_before_it_at_its_provider(
    batches_here, settings, openai_client, acme, mock_upstream, list_answering
):
    """The lines of the provider batch submitted first stay with it, holding their reservations, and are billed once;
    those of the provider whose answer cannot be read run here."""
    settings.LLMOPS_BATCH_DELEGATE_PROVIDERS = [DELEGATING_PROVIDER, "mock-answers-a-list"]
    batchable = provider_model(
        mock_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme
    )
    elsewhere = provider_model(
        list_answering.url, provider_name="mock-answers-a-list", model_name="acme-elsewhere", tenant=acme
    )
    tenant_model_access_set(
        tenant=acme.tenant, allowed_models=[acme.small, batchable, elsewhere], default_model=acme.small
    )
    budget = team_day_budget(acme, "1")
    lines = [chat_line(custom_id, model, max_tokens=24) for custom_id, model in LINES_ON_TWO_PROVIDERS]
    batch_lines_before = mock_upstream.app.batch_lines_served
    batch_id = create(openai_client, lines)

    run_on_a_new_loop(batch_process(batch_id))
    statuses = dict(BatchLine.objects.unscoped().filter(batch_id=batch_id).values_list("custom_id", "status"))
    held = budget_status(budget=budget, now=timezone.now()).reserved_usd
    time.sleep(mock_upstream_module.BATCH_SECONDS)
    run_on_a_new_loop(batch_process(batch_id))

    assert statuses == {"a-0": "delegated", "b-0": "succeeded", "a-1": "delegated"}
    assert held > 0
    batch = Batch.objects.unscoped().get(pk=batch_id)
    assert (batch.status, batch.completed_count) == ("completed", 3)
    assert [state["provider"] for state in batch.provider_batches.values()] == [DELEGATING_PROVIDER]
    assert mock_upstream.app.batch_lines_served - batch_lines_before == 2
    charged = sum(record.cost_usd for record in batch_ledger(batch_id))
    assert charged > 0
    assert_charged_and_released(budget, charged)


LINES_ON_TWO_PROVIDERS = [("a-0", "acme-batchable"), ("b-0", "acme-elsewhere"), ("a-1", "acme-batchable")]


def test_a_result_row_that_cannot_be_merged_fails_its_line_and_the_others_are_merged(
    batches_here, settings, openai_client, acme, mock_upstream, monkeypatch
):
    """Whatever stops one row (here a fault planted in reading it) is logged and fails its line: raising would stop
    the merge on every later poll, and the batch would never finish."""
    settings.LLMOPS_BATCH_LINE_MAX_ATTEMPTS = 1
    provider_model(mock_upstream.url, provider_name=DELEGATING_PROVIDER, model_name="acme-batchable", tenant=acme)
    read = delegation._outcome

    async def outcome(row, line, served):
        if line.custom_id == "unmergeable":
            raise RuntimeError("a fault in reading the row")
        return await read(row, line, served)

    monkeypatch.setattr(delegation, "_outcome", outcome)
    custom_ids = ["unmergeable", "merged"]
    batch_id = create(
        openai_client, [chat_line(custom_id, "acme-batchable", max_tokens=24) for custom_id in custom_ids]
    )

    submit_then_merge(batch_id)

    batch = Batch.objects.unscoped().get(pk=batch_id)
    assert (batch.status, batch.completed_count, batch.failed_count) == ("completed", 1, 1)
    lines = {line.custom_id: line for line in BatchLine.objects.unscoped().filter(batch_id=batch_id)}
    failed = lines["unmergeable"]
    assert (failed.status_code, failed.response_body["error"]["code"]) == (502, "no_response")
    assert lines["merged"].status_code == 200
