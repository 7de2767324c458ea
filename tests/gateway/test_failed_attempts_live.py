"""Every upstream dollar is metered: an attempt that failed but that the provider may bill (an answer the gateway
cannot use, a timeout once the request was sent) has a ledger row of its own, kind `failed_attempt`, priced at the
model it was made to, and its cost reaches the budget counters with the request's; the two agree to the cent."""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal

import httpx
import orjson
import pytest
from django.db import DatabaseError
from django.utils import timezone

from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_counter_check, budget_create
from billing.ledger.costs import usage_cost
from billing.models import UsageKind, UsageRecord
from llmops.gateway.batches.models import Job, JobStatus
from llmops.gateway.chat import failed_attempts, recording
from llmops.gateway.jobs import services as job_services
from llmops.mock_upstream import MockUpstream
from routing.catalog import ModelPrices
from routing.resilience import RetryPolicy
from tests.conftest import LARGE_PRICES, SMALL_PRICES
from tests.factories import ModelFactory, ProviderFactory
from tests.gateway.test_embeddings import allow as allow_embeddings
from tests.gateway.test_embeddings import embedding_model
from tests.gateway.test_routing_live import publish
from tests.loops import run as run_on_a_new_loop
from tests.servers import serving

MESSAGES = [{"role": "user", "content": "A short answer about refunds, please."}]
LIMIT = Decimal("1")


class SpoiledFirst:
    """The project's mock upstream, answering the next chat completions it is sent as a failing model would: each
    queued mark (``malformed-usage-negative``, ``stall``...) is added to the model name of one request."""

    def __init__(self, app: MockUpstream):
        self.app = app
        self.marks: deque[str] = deque()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions" or not self.marks:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        payload = orjson.loads(body)
        payload["model"] = f"{payload['model']}-{self.marks.popleft()}"
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": orjson.dumps(payload), "more_body": False}

        await self.app(scope, replay, send)


@pytest.fixture(scope="module")
def spoiling_upstream():
    yield from serving(SpoiledFirst(MockUpstream()))


@pytest.fixture
def spoiled(spoiling_upstream):
    spoiling_upstream.app.marks.clear()
    yield spoiling_upstream.app.marks
    spoiling_upstream.app.marks.clear()


def large_model(setup, name: str, *, base_url: str, upstream_name: str = "mock-small", timeout=Decimal("5")):
    """A model at the large model's prices, so what it is charged is told apart from the small fallback's."""
    provider = ProviderFactory(base_url=f"{base_url}/v1", timeout_seconds=timeout)
    model = ModelFactory(
        name=name,
        provider=provider,
        upstream_name=upstream_name,
        input_price_per_million=LARGE_PRICES[0],
        cached_input_price_per_million=LARGE_PRICES[1],
        output_price_per_million=LARGE_PRICES[2],
    )
    setup.tenant.model_access.allowed_models.add(model)
    return model


def chain(setup, first, then):
    """The tenant's `auto` tries `first`, then `then`."""
    rule = {
        "priority": 1,
        "name": "chain",
        "match": {"requested_models": ["auto"]},
        "outcome": {"target_model": first.name, "fallback_models": [then.name]},
    }
    publish(setup, [rule], aliases={"auto": {"small": setup.small.name, "large": setup.large.name}})


def chat(gateway, setup, model: str, *, stream: bool = False) -> tuple[httpx.Response, str]:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 20, "stream": stream}
    headers = {"authorization": f"Bearer {setup.key}"}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30) as answer:
        return answer, answer.read().decode()


def eventually(find: Callable[[], object], *, timeout: float = 10.0):
    """What ``find`` finds, once it finds it: a live request charges its failed attempts on a task of their own."""
    deadline = time.monotonic() + timeout
    while not (found := find()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not found within {timeout} s")
        time.sleep(0.02)
    return found


def attempt_rows(request_id: str, count: int) -> list[UsageRecord]:
    """The request's failed attempts' rows in the order they were charged, once there are ``count`` of them."""
    attempts = UsageRecord.objects.unscoped().filter(parent_request_id=request_id, kind=UsageKind.FAILED_ATTEMPT)
    if count == 0:
        return list(attempts)
    return eventually(lambda: len(rows := list(attempts.order_by("id"))) == count and rows)


def rows_of(response, *, attempts: int) -> tuple[UsageRecord, list[UsageRecord]]:
    """The request's row, and its ``attempts`` failed attempts' in the order they were made."""
    request_id = response.headers["x-llmops-request-id"]
    return UsageRecord.objects.unscoped().get(request_id=request_id), attempt_rows(request_id, attempts)


def priced(prices, record: UsageRecord) -> Decimal:
    return usage_cost(
        prices=ModelPrices(*prices),
        prompt_tokens=record.prompt_tokens,
        cached_tokens=record.cached_tokens,
        completion_tokens=record.completion_tokens,
    )


def assert_counted(budget, spent: Decimal) -> None:
    """The budget's counter holds exactly what its ledger rows cost, and nothing stays reserved."""
    now = timezone.now()
    check = budget_counter_check(budget=budget, now=now)
    assert (check.counted_usd, check.ledger_usd) == (spent, spent)
    assert budget_status(budget=budget, now=now).reserved_usd == 0


def test_an_unusable_answer_retried_then_answered_is_charged_with_the_answer(gateway, acme, spoiling_upstream, spoiled):
    model = large_model(acme, "acme-spoiled", base_url=spoiling_upstream.url)
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    spoiled.append("malformed-usage-negative")

    response, text = chat(gateway, acme, model.name)

    assert response.status_code == 200, text
    request, [attempt] = rows_of(response, attempts=1)
    assert (request.served_model, request.attempts, request.usage_estimated) == (model.name, 2, False)
    assert (attempt.kind, attempt.served_model, attempt.attempts) == (UsageKind.FAILED_ATTEMPT, model.name, 1)
    assert (attempt.http_status, attempt.error_code) == (502, "upstream_invalid_response")
    # The gateway's own count: the prompt sent, and the answer's text that came back.
    assert attempt.usage_estimated and attempt.prompt_tokens == request.prompt_tokens
    assert attempt.completion_tokens > 0
    assert attempt.cost_usd == priced(LARGE_PRICES, attempt) > 0
    # The attempt is charged on a task of its own: the request's settle may have seen it or not.
    remaining = Decimal(response.headers["x-llmops-budget-remaining-usd"])
    assert remaining in (LIMIT - request.cost_usd - attempt.cost_usd, LIMIT - request.cost_usd)
    assert_counted(budget, request.cost_usd + attempt.cost_usd)


def test_unusable_answers_a_fallback_took_over_from_are_charged_at_their_own_model_s_prices(
    gateway, acme, mock_upstream
):
    malformed = large_model(
        acme, "acme-malformed", base_url=mock_upstream.url, upstream_name="mock-malformed-body-array"
    )
    chain(acme, malformed, acme.small)
    malformed_budget = budget_create(
        tenant=acme.tenant, scope="tenant_model", model_name=malformed.name, period="day", limit_usd=LIMIT
    )
    small_budget = budget_create(
        tenant=acme.tenant, scope="tenant_model", model_name=acme.small.name, period="day", limit_usd=LIMIT
    )
    tenant_budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")

    response, text = chat(gateway, acme, "auto")

    assert response.status_code == 200, text
    request, attempts = rows_of(response, attempts=2)
    assert (request.served_model, request.attempts) == (acme.small.name, 3)
    assert [(row.served_model, row.error_code) for row in attempts] == [
        (malformed.name, "upstream_invalid_response")
    ] * 2
    assert all(row.prompt_tokens > 0 and row.cost_usd == priced(LARGE_PRICES, row) > 0 for row in attempts)
    attempts_cost = sum(row.cost_usd for row in attempts)
    assert_counted(malformed_budget, attempts_cost)
    assert_counted(small_budget, request.cost_usd)
    assert_counted(tenant_budget, request.cost_usd + attempts_cost)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
def test_timed_out_attempts_a_fallback_took_over_from_are_charged_their_prompt(gateway, acme, mock_upstream, stream):
    stalled = large_model(
        acme, "acme-stalled", base_url=mock_upstream.url, upstream_name="mock-stall", timeout=Decimal("0.5")
    )
    chain(acme, stalled, acme.small)
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")

    response, text = chat(gateway, acme, "auto", stream=stream)

    assert response.status_code == 200 and (not stream or text.rstrip().endswith("data: [DONE]")), text
    request, attempts = rows_of(response, attempts=2)
    assert (request.served_model, request.attempts) == (acme.small.name, 3)
    assert [(row.served_model, row.http_status, row.error_code) for row in attempts] == [
        (stalled.name, 504, "upstream_timeout")
    ] * 2
    # The prompt was sent and is the floor charged; no answer came back.
    assert all(row.usage_estimated and row.prompt_tokens > 0 and row.completion_tokens == 0 for row in attempts)
    assert all(row.cost_usd == priced(LARGE_PRICES, row) > 0 for row in attempts)
    assert_counted(budget, request.cost_usd + sum(row.cost_usd for row in attempts))


def test_a_chain_that_only_times_out_charges_every_prompt_it_sent(gateway, acme, mock_upstream):
    stalled = large_model(
        acme, "acme-stalled", base_url=mock_upstream.url, upstream_name="mock-stall", timeout=Decimal("0.5")
    )
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")

    response, text = chat(gateway, acme, stalled.name)

    assert response.status_code == 504, text
    request, [attempt] = rows_of(response, attempts=1)
    # The last attempt is the request's own row; the one before has its own.
    for row in (request, attempt):
        assert (row.served_model, row.error_code, row.completion_tokens) == (stalled.name, "upstream_timeout", 0)
        assert row.usage_estimated and row.cost_usd == priced(LARGE_PRICES, row) > 0
    assert_counted(budget, request.cost_usd + attempt.cost_usd)


def test_a_plain_answer_is_one_row_and_charged_once(gateway, acme):
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")

    response, text = chat(gateway, acme, acme.small.name)

    assert response.status_code == 200, text
    request, attempts = rows_of(response, attempts=0)
    assert attempts == [] and UsageRecord.objects.unscoped().count() == 1
    assert (request.attempts, request.cost_usd) == (1, priced(SMALL_PRICES, request))
    assert_counted(budget, request.cost_usd)


def test_embeddings_timed_out_before_a_fallback_are_charged_their_inputs(gateway, acme, mock_upstream):
    embed = embedding_model(acme, name="acme-embed")
    slow_provider = ProviderFactory(base_url=f"{mock_upstream.url}/v1", timeout_seconds=Decimal("0.5"))
    stalled = embedding_model(
        acme, name="acme-embed-stalled", upstream="stall", price=Decimal("0.13"), provider=slow_provider
    )
    allow_embeddings(acme, embed, stalled)
    rule = {"priority": 10, "name": "with-fallback", "match": {"requested_models": [stalled.name]}}
    publish(acme, [{**rule, "outcome": {"fallback_models": [embed.name]}}])
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")

    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        json={"model": stalled.name, "input": "the refund window"},
        headers={"authorization": f"Bearer {acme.key}"},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    request, attempts = rows_of(response, attempts=2)
    assert request.served_model == embed.name
    for row in attempts:
        assert (row.served_model, row.error_code, row.prompt_tokens) == (
            stalled.name,
            "upstream_timeout",
            request.prompt_tokens,
        )
        assert row.cost_usd == priced((Decimal("0.13"), Decimal("0.13"), Decimal(0)), row) > 0
    assert_counted(budget, request.cost_usd + sum(row.cost_usd for row in attempts))


def leave_before_the_answer(gateway, setup, model: str, *, stream: bool = False) -> None:
    """A client that gives up on its answer (a stream's first event) after 1.5 s: the server cancels the request."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": model, "messages": MESSAGES, "max_tokens": 20, "stream": stream},
            headers={"authorization": f"Bearer {setup.key}"},
            timeout=httpx.Timeout(10, read=1.5),
        )


def only_request_row() -> UsageRecord:
    return eventually(lambda: UsageRecord.objects.unscoped().filter(kind=UsageKind.REQUEST).first())


def test_a_client_that_leaves_during_the_retry_still_pays_the_attempt_before_it(
    gateway, acme, spoiling_upstream, spoiled
):
    """The first answer cannot be used; the client goes away while the retry is in flight. The server cancels the
    request: its own row is the 499, and the unusable answer before it has its row and its charge all the same."""
    model = large_model(acme, "acme-spoiled", base_url=spoiling_upstream.url, timeout=Decimal("20"))
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    spoiled.extend(["malformed-usage-negative", "stall"])

    leave_before_the_answer(gateway, acme, model.name)

    request = only_request_row()
    [attempt] = attempt_rows(request.request_id, 1)
    assert (request.http_status, request.error_code, request.completion_tokens) == (499, "client_disconnected", 0)
    assert (attempt.served_model, attempt.http_status, attempt.error_code) == (
        model.name,
        502,
        "upstream_invalid_response",
    )
    assert attempt.completion_tokens > 0 and attempt.cost_usd == priced(LARGE_PRICES, attempt) > 0
    assert_counted(budget, request.cost_usd + attempt.cost_usd)


@pytest.mark.parametrize("mark", ["stall", "malformed-usage-negative"], ids=["timed-out", "unusable"])
def test_a_client_that_leaves_during_the_backoff_pays_the_attempt_before_it_once(
    gateway, acme, spoiling_upstream, spoiled, monkeypatch, mark
):
    """The first attempt times out once its request was sent, or answers something unusable (billed either way); the
    client goes away during the backoff, before a second attempt. The attempt has its row, at the gateway's count of
    it (an unusable answer's text included), and the request's 499 row charges nothing: no call was under way."""
    model = large_model(acme, "acme-spoiled", base_url=spoiling_upstream.url, timeout=Decimal("0.5"))
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    spoiled.append(mark)
    monkeypatch.setattr("routing.resilience.backoff_delay", lambda *args: 5.0)  # within the 60 s deadline

    leave_before_the_answer(gateway, acme, model.name)

    request = only_request_row()
    [attempt] = attempt_rows(request.request_id, 1)
    assert (request.http_status, request.error_code, request.served_model, request.attempts) == (
        499,
        "client_disconnected",
        model.name,
        1,
    )
    assert (request.prompt_tokens, request.completion_tokens, request.cost_usd) == (0, 0, 0)
    assert attempt.served_model == model.name and attempt.prompt_tokens > 0
    assert (attempt.completion_tokens > 0) == (mark != "stall")
    assert attempt.cost_usd == priced(LARGE_PRICES, attempt) > 0
    assert_counted(budget, attempt.cost_usd)


def test_a_client_that_leaves_during_a_fallback_pays_its_prompt_at_the_fallback_s_prices(
    gateway, acme, mock_upstream, monkeypatch
):
    """The first model times out once sent; the client goes away while the fallback is in flight: the 499 row's
    prompt is the fallback's, at its prices, and the timed-out attempt has its own row."""
    stalled = large_model(
        acme, "acme-stalled", base_url=mock_upstream.url, upstream_name="mock-stall", timeout=Decimal("0.5")
    )
    provider = ProviderFactory(base_url=f"{mock_upstream.url}/v1", timeout_seconds=Decimal("20"))
    slow = ModelFactory(
        name="acme-slow",
        provider=provider,
        upstream_name="mock-stall",
        input_price_per_million=SMALL_PRICES[0],
        cached_input_price_per_million=SMALL_PRICES[1],
        output_price_per_million=SMALL_PRICES[2],
    )
    acme.tenant.model_access.allowed_models.add(slow)
    chain(acme, stalled, slow)
    monkeypatch.setattr("llmops.gateway.chat.pipeline.RETRY_POLICY", RetryPolicy(attempts_per_model=1))
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")

    leave_before_the_answer(gateway, acme, "auto")

    request = only_request_row()
    [attempt] = attempt_rows(request.request_id, 1)
    assert (request.http_status, request.served_model, request.attempts) == (499, slow.name, 2)
    assert (attempt.served_model, attempt.error_code) == (stalled.name, "upstream_timeout")
    assert attempt.prompt_tokens == request.prompt_tokens > 0
    assert attempt.cost_usd == priced(LARGE_PRICES, attempt) > request.cost_usd == priced(SMALL_PRICES, request)
    assert_counted(budget, request.cost_usd + attempt.cost_usd)


@pytest.mark.parametrize(
    ("stream", "mark", "code"),
    [(False, "malformed-usage-negative", "upstream_invalid_response"), (True, "stall", "upstream_timeout")],
    ids=["complete", "streamed"],
)
def test_charging_the_attempts_before_an_answer_holds_back_neither_the_answer_nor_its_row(
    gateway, acme, spoiling_upstream, spoiled, monkeypatch, stream, mark, code
):
    """Were the answer to wait for its failed attempts' charges, a client that left meanwhile would cancel the
    request holding an answer not yet settled (charged its prompt only) or an opened stream (never closed)."""
    model = large_model(acme, "acme-spoiled", base_url=spoiling_upstream.url, timeout=Decimal("0.5"))
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    spoiled.append(mark)
    slowly_counted = failed_attempts.failure_usage

    async def failure_usage(*args):
        await asyncio.sleep(3)
        return await slowly_counted(*args)

    monkeypatch.setattr(failed_attempts, "failure_usage", failure_usage)
    body = {"model": model.name, "messages": MESSAGES, "max_tokens": 20, "stream": stream}
    headers = {"authorization": f"Bearer {acme.key}"}

    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=httpx.Timeout(10, read=1.5)
    ) as response:
        text = response.read().decode()

    assert response.status_code == 200 and (not stream or text.rstrip().endswith("data: [DONE]")), text
    request, [attempt] = rows_of(response, attempts=1)
    assert (request.http_status, request.usage_estimated) == (200, False) and request.completion_tokens > 0
    assert attempt.error_code == code and attempt.cost_usd > 0
    assert_counted(budget, request.cost_usd + attempt.cost_usd)


def test_a_job_run_again_after_its_worker_died_charges_the_attempts_of_both_runs(
    gateway, acme, mock_upstream, ledger_drainer, monkeypatch
):
    """A job keeps its request id however often it runs. Its attempts' rows do not: the second run's are not the
    first run's ids again, which the ledger would drop while the budget counters charged them."""
    malformed = large_model(
        acme, "acme-malformed", base_url=mock_upstream.url, upstream_name="mock-malformed-body-array"
    )
    chain(acme, malformed, acme.small)
    # The failing model's budget: only the attempts count there, not the job's own row, which a run that dies before
    # recording it has charged to the counters already (the nightly check brings those back to the ledger).
    budget = budget_create(
        tenant=acme.tenant, scope="tenant_model", model_name=malformed.name, period="day", limit_usd=LIMIT
    )
    job = Job.objects.create(
        tenant=acme.tenant,
        team=acme.team,
        api_key=acme.api_key,
        body={"model": "auto", "messages": MESSAGES, "max_tokens": 20},
    )
    recorded = job_services._job_finish
    # The first run's worker dies after the call, before it records the job: the job stays in progress.
    monkeypatch.setattr(job_services, "_job_finish", lambda **kwargs: None)
    run_on_a_new_loop(job_services.job_run(job_id=job.id))
    monkeypatch.setattr(job_services, "_job_finish", recorded)

    run_on_a_new_loop(job_services.job_run(job_id=job.id))

    ledger_drainer.wait_drained()
    assert Job.objects.unscoped().get(pk=job.id).status == JobStatus.COMPLETED
    attempts = attempt_rows(job_services.job_request_id(job.id), 4)
    assert {row.served_model for row in attempts} == {malformed.name}
    assert len({row.request_id for row in attempts}) == 4
    assert_counted(budget, sum(row.cost_usd for row in attempts))


@pytest.mark.parametrize(
    ("upstream_name", "marks", "status", "code"),
    [("mock-small", ["malformed-usage-negative"], 200, ""), ("mock-stall", [], 504, "upstream_timeout")],
    ids=["answered", "failed"],
)
def test_an_attempt_that_cannot_be_charged_leaves_the_request_its_outcome_and_its_row(
    gateway, acme, spoiling_upstream, spoiled, monkeypatch, caplog, upstream_name, marks, status, code
):
    """The ledger refuses the attempt's row: logged with what it cost, and the client gets what it would have, the
    answer or the chain's own OpenAI error, with the request's row; the counters charged nothing the ledger lacks."""
    model = large_model(
        acme, "acme-spoiled", base_url=spoiling_upstream.url, upstream_name=upstream_name, timeout=Decimal("0.5")
    )
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    spoiled.extend(marks)
    settle = recording.reservation_settle

    async def failing_for_attempts(reservation, *, actual, event=None, served_model=None):
        if event is not None and event.kind == UsageKind.FAILED_ATTEMPT:
            raise DatabaseError("the ledger is unreachable")
        return await settle(reservation, actual=actual, event=event, served_model=served_model)

    monkeypatch.setattr(recording, "reservation_settle", failing_for_attempts)

    response, text = chat(gateway, acme, model.name)

    assert response.status_code == status, text
    if code:
        assert orjson.loads(text)["error"]["code"] == code
    request, attempts = rows_of(response, attempts=0)
    assert (request.http_status, request.error_code, request.served_model) == (status, code, model.name)
    assert request.cost_usd > 0 and attempts == []
    request_id = response.headers["x-llmops-request-id"]
    [logged] = eventually(lambda: [row for row in caplog.records if "not charged" in row.getMessage()])
    assert request_id in logged.getMessage() and "USD" in logged.getMessage() and logged.exc_info
    assert_counted(budget, request.cost_usd)


def test_a_job_whose_attempt_cannot_be_charged_keeps_its_answer_and_its_row(
    gateway, acme, mock_upstream, ledger_drainer, monkeypatch
):
    """A job waits for its attempts' charges (its loop may not run once it returns): one that fails is logged, and
    the job completes with its answer and its own row."""
    malformed = large_model(
        acme, "acme-malformed", base_url=mock_upstream.url, upstream_name="mock-malformed-body-array"
    )
    chain(acme, malformed, acme.small)
    budget = budget_create(tenant=acme.tenant, limit_usd=LIMIT, period="day")
    job = Job.objects.create(
        tenant=acme.tenant,
        team=acme.team,
        api_key=acme.api_key,
        body={"model": "auto", "messages": MESSAGES, "max_tokens": 20},
    )
    settle = recording.reservation_settle

    async def failing_for_attempts(reservation, *, actual, event=None, served_model=None):
        if event is not None and event.kind == UsageKind.FAILED_ATTEMPT:
            raise DatabaseError("the ledger is unreachable")
        return await settle(reservation, actual=actual, event=event, served_model=served_model)

    monkeypatch.setattr(recording, "reservation_settle", failing_for_attempts)

    run_on_a_new_loop(job_services.job_run(job_id=job.id))

    ledger_drainer.wait_drained()
    done = Job.objects.unscoped().get(pk=job.id)
    assert (done.status, done.status_code, done.result["object"]) == (JobStatus.COMPLETED, 200, "chat.completion")
    request = UsageRecord.objects.unscoped().get(request_id=done.request_id)
    assert (request.served_model, request.attempts, request.cost_usd) == (acme.small.name, 3, done.cost_usd)
    assert attempt_rows(done.request_id, 0) == []
    assert_counted(budget, request.cost_usd)
