"""The worst case is the worst case, and every upstream dollar is metered, through the live gateway: `n` under a
small budget never overshoots (two uvicorn workers, the drainer, Postgres, Redis), compression's summary call is a
ledger row of its own that counts against the budget, and refusals say why with the figures."""

import asyncio
import time
import uuid
from datetime import UTC
from decimal import ROUND_DOWN, Decimal

import httpx
import orjson
import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_create
from billing.finance.exports import ExportGrouping, aggregate_queryset
from billing.ledger.costs import LEDGER_QUANTUM, usage_cost
from billing.ledger.stream import STREAM_KEY
from billing.models import UsageKind, UsageRecord
from billing.ratelimits import rate_limit_create
from core.background import background_drain
from core.redis import sync_redis
from llmops import asgi
from llmops.gateway.chat import summaries
from routing.catalog import ModelPrices
from routing.services import tenant_model_access_set
from routing.tokens import count_chat_tokens
from tenants.services import api_key_create
from tests.asgi_requests import authorized_body_headers, body_then_disconnect, http_scope
from tests.conftest import SMALL_PRICES, make_tenant_setup
from tests.factories import ModelFactory, ProviderFactory
from tests.gateway.test_failed_attempts_live import assert_counted, eventually
from tests.gateway.test_routing_live import chat, publish
from tests.loops import run

MESSAGES = [{"role": "user", "content": "Classify this support ticket: my refund has not arrived."}]
# At most the mock's 24 tokens per answer, so every choice bills exactly max_tokens: actual cost == worst case.
MAX_TOKENS = 20
CONCURRENT = 20


def quantum(amount: Decimal) -> Decimal:
    """To the ledger's ten places, as a budget's limit is stored."""
    return amount.quantize(LEDGER_QUANTUM, rounding=ROUND_DOWN)


def usd(amount: Decimal) -> str:
    """An amount as a refusal states it: the ledger's ten places."""
    return f"${amount.quantize(LEDGER_QUANTUM):f}"


def worst_case(*, choices: int, max_tokens: int = MAX_TOKENS, prompt_tokens: int | None = None) -> Decimal:
    prompt = count_chat_tokens(MESSAGES, model="mock-small") if prompt_tokens is None else prompt_tokens
    return usage_cost(
        prices=ModelPrices(*SMALL_PRICES),
        prompt_tokens=prompt,
        cached_tokens=0,
        completion_tokens=choices * max_tokens,
    )


async def burst(url: str, key: str, model: str, choices: int) -> list[httpx.Response | tuple[int, str]]:
    """CONCURRENT requests with `n` at once, every fourth streamed."""
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:

        async def one(index: int):
            body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "n": choices}
            if index % 4 == 0:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    return response.status_code, (await response.aread()).decode()
            response = await client.post("/v1/chat/completions", json=body)
            return response.status_code, response.text

        return await asyncio.gather(*(one(index) for index in range(CONCURRENT)))


def wait_for_empty_stream(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sync_redis().xlen(STREAM_KEY):
        assert time.monotonic() < deadline, "the ledger stream was not drained"
        time.sleep(0.05)


def test_n_under_a_small_key_budget_never_overshoots_on_two_workers(spawn, process_env, gateway_port, mock_upstream):
    setup = make_tenant_setup(mock_upstream.url, slug="manyn")
    other_key, other_secret = api_key_create(team=setup.team, name="n64")
    limits = {
        16: quantum(worst_case(choices=16) * Decimal("3.5")),
        64: quantum(worst_case(choices=64) * Decimal("2.5")),
    }
    budget_create(tenant=setup.tenant, scope="key", api_key=setup.api_key, period="day", limit_usd=limits[16])
    budget_create(tenant=setup.tenant, scope="key", api_key=other_key, period="day", limit_usd=limits[64])
    process_env["LLMOPS_CACHE_EMBEDDER"] = ""
    start_gateway, start_drainer = spawn
    start_gateway(gateway_port, workers=2).start()
    start_drainer("worst-case").start()
    url = f"http://127.0.0.1:{gateway_port}"

    async def both():
        return await asyncio.gather(
            burst(url, setup.key, setup.small.name, 16), burst(url, other_secret, setup.small.name, 64)
        )

    by_n = dict(zip((16, 64), asyncio.run(both()), strict=True))
    wait_for_empty_stream()

    for choices, key in ((16, setup.api_key), (64, other_key)):
        results = by_n[choices]
        answered = [text for status, text in results if status == 200]
        refused = [text for status, text in results if status == 429]
        print(f"n={choices}: {len(answered)} answered, {len(refused)} refused of {CONCURRENT}")
        assert len(answered) + len(refused) == CONCURRENT
        assert 1 <= len(answered) <= int(limits[choices] / worst_case(choices=choices))
        assert all('"budget_exceeded"' in text and "cannot hold this request's worst case" in text for text in refused)
        assert any(f"per choice ({choices} choices) it would fit" in text for text in refused)
        rows = UsageRecord.objects.unscoped().filter(api_key=key, http_status=200)
        assert rows.count() == len(answered)
        assert all(row.completion_tokens == choices * MAX_TOKENS for row in rows)
        assert rows.aggregate(spent=Sum("cost_usd"))["spent"] <= limits[choices]


def test_the_answer_to_n_has_n_choices_and_is_billed_for_all_of_them(gateway, acme):
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {acme.key}"},
        json={"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "n": 5},
    )

    assert response.status_code == 200
    assert [choice["index"] for choice in response.json()["choices"]] == [0, 1, 2, 3, 4]
    assert Decimal(response.headers["x-llmops-cost-usd"]) == worst_case(choices=5)


def test_a_token_rate_limit_counts_every_choice(gateway, acme):
    prompt = count_chat_tokens(MESSAGES, model="mock-small")
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, tokens_per_minute=prompt + 4 * MAX_TOKENS)
    headers = {"authorization": f"Bearer {acme.key}"}
    body = {"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}

    eight = httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers, json={**body, "n": 8})
    four = httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers, json={**body, "n": 4})

    assert eight.status_code == 429 and eight.json()["error"]["code"] == "rate_limit_exceeded"
    assert four.status_code == 200, four.text


def test_a_spent_budget_says_it_is_spent_and_when_it_resets(gateway, acme):
    limit = worst_case(choices=1)
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)
    body = {"model": acme.small.name, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    headers = {"authorization": f"Bearer {acme.key}"}

    first = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
    second = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)

    assert first.status_code == 200
    assert second.status_code == 429
    message = second.json()["error"]["message"]
    assert f"of {usd(limit)} is used up: {usd(limit)} spent." in message
    assert 0 < int(second.headers["retry-after"]) <= 24 * 3600 and "x-should-retry" not in second.headers


def test_a_worst_case_that_does_not_fit_says_so_with_both_figures_and_the_max_tokens_that_fits(gateway, acme):
    limit = worst_case(choices=1, max_tokens=8)
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {acme.key}"},
        json={"model": acme.small.name, "messages": MESSAGES, "max_tokens": 1000},
    )

    assert response.status_code == 429
    message = response.json()["error"]["message"]
    worst = usd(worst_case(choices=1, max_tokens=1000))
    assert f"cannot hold this request's worst case of {worst}: {usd(Decimal(0))} spent" in message
    assert f"{usd(limit)} remains." in message and message.endswith("With max_tokens=8 it would fit.")
    fitting = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {acme.key}"},
        json={"model": acme.small.name, "messages": MESSAGES, "max_tokens": 8},
    )
    assert fitting.status_code == 200


def long_conversation() -> list[dict]:
    """Over a 120-token cap, with a history compression summarises; words of its own so no summary is cached."""
    topic = uuid.uuid4().hex[:8]
    history = []
    for turn in range(12):
        history += [
            {"role": "user", "content": f"Question {turn} on {topic}: tell me about part {turn} in detail."},
            {"role": "assistant", "content": f"Answer {turn}: part {turn} of {topic} is interesting " * 3},
        ]
    return [{"role": "system", "content": "You are terse."}, *history, {"role": "user", "content": "And now?"}]


COMPRESS = [{"priority": 1, "name": "squeeze", "outcome": {"prompt_token_cap": 120, "over_cap_action": "compress"}}]


def rows_of(response) -> tuple[UsageRecord, UsageRecord | None]:
    request_id = response.headers["x-llmops-request-id"]
    return (
        UsageRecord.objects.unscoped().get(request_id=request_id),
        UsageRecord.objects.unscoped().filter(parent_request_id=request_id).first(),
    )


def test_the_compression_summary_is_a_ledger_row_of_its_request_and_counts_against_the_budget(gateway, acme):
    publish(acme, COMPRESS)
    limit = Decimal("1")
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)

    response = chat(gateway, acme, {"model": acme.small.name, "messages": long_conversation(), "max_tokens": 10})

    assert response.status_code == 200, response.text
    main, summary = rows_of(response)
    assert summary is not None, "the summary call left no ledger row"
    assert (summary.kind, main.kind) == (UsageKind.COMPRESSION_SUMMARY, UsageKind.REQUEST)
    assert summary.served_model == acme.small.name and summary.http_status == 200
    assert summary.cost_usd > 0 and summary.prompt_tokens > 0
    assert Decimal(response.headers["x-llmops-budget-remaining-usd"]) == limit - main.cost_usd - summary.cost_usd
    removed = main.prompt_tokens_before_compression - main.prompt_tokens_after_compression
    gross = usage_cost(prices=ModelPrices(*SMALL_PRICES), prompt_tokens=removed, cached_tokens=0, completion_tokens=0)
    assert main.saved_compression_usd == gross - summary.cost_usd
    (group,) = aggregate_queryset(
        UsageRecord.objects.unscoped().filter(tenant=acme.tenant), group_by=(ExportGrouping.MODEL,), zone=UTC
    )
    assert (group["requests"], group["cost_usd"]) == (1, main.cost_usd + summary.cost_usd)


def test_a_summary_that_timed_out_once_sent_is_charged_its_prompt_as_a_failed_attempt_is(gateway, acme):
    """The provider had the summary's request when the wait for its answer ran out, and may bill its prompt: the
    summary's row charges it, as a request's attempt that failed so is charged; the request goes on without it."""
    stalling = ModelFactory(
        name="acme-stalling",
        provider=ProviderFactory(base_url=acme.small.provider.base_url, timeout_seconds=Decimal("0.3")),
        upstream_name="mock-stall",
    )
    tenant_model_access_set(
        tenant=acme.tenant, allowed_models=[acme.small, acme.large, stalling], default_model=stalling
    )
    publish(acme, COMPRESS)
    budget = budget_create(tenant=acme.tenant, limit_usd=Decimal("1"), period="day")

    response = chat(gateway, acme, {"model": acme.small.name, "messages": long_conversation(), "max_tokens": 10})

    assert response.status_code == 200, response.text
    main, summary = rows_of(response)
    assert (summary.http_status, summary.error_code, summary.served_model) == (504, "upstream_timeout", stalling.name)
    assert summary.usage_estimated and summary.prompt_tokens > 0 and summary.completion_tokens == 0
    prices = ModelPrices(*SMALL_PRICES)
    assert summary.cost_usd == usage_cost(
        prices=prices, prompt_tokens=summary.prompt_tokens, cached_tokens=0, completion_tokens=0
    )
    assert summary.cost_usd > 0
    assert_counted(budget, main.cost_usd + summary.cost_usd)


def test_a_summary_whose_failure_is_being_counted_when_its_client_leaves_is_recorded_and_settled(
    gateway, acme, mock_upstream, monkeypatch
):
    """The summary's answer cannot be used (the provider may bill it); the client leaves while the gateway counts what
    the failure cost. The summary is recorded all the same, as the failure it was, and its reservation settled."""
    malformed = ModelFactory(
        name="acme-malformed", provider=acme.small.provider, upstream_name="mock-malformed-body-array"
    )
    tenant_model_access_set(
        tenant=acme.tenant, allowed_models=[acme.small, acme.large, malformed], default_model=malformed
    )
    publish(acme, COMPRESS)
    budget = budget_create(tenant=acme.tenant, limit_usd=Decimal("1"), period="day")
    counting = asyncio.Event()
    count = summaries.failure_usage

    async def counted_slowly(*args, **kwargs):
        counting.set()
        await asyncio.sleep(0.1)  # the client's disconnect cancels the request meanwhile
        return await count(*args, **kwargs)

    monkeypatch.setattr(summaries, "failure_usage", counted_slowly)
    raw = orjson.dumps({"model": acme.small.name, "messages": long_conversation(), "max_tokens": 10})

    async def leave_while_the_failure_is_counted():
        async def send(message):
            pass

        scope = http_scope("/v1/chat/completions", headers=authorized_body_headers(acme.key, raw))
        await asgi.application(scope, body_then_disconnect(raw, counting), send)
        await background_drain(10)

    run(leave_while_the_failure_is_counted())

    assert counting.is_set()
    summaries_of_acme = UsageRecord.objects.unscoped().filter(tenant=acme.tenant, kind=UsageKind.COMPRESSION_SUMMARY)
    summary = eventually(summaries_of_acme.first)
    assert (summary.http_status, summary.error_code, summary.served_model) == (
        502,
        "upstream_invalid_response",
        malformed.name,
    )
    assert summary.usage_estimated and summary.prompt_tokens > 0 and summary.cost_usd > 0
    assert budget_status(budget=budget, now=timezone.now()).reserved_usd == 0


def test_a_budget_that_covers_the_request_but_not_its_summary_too_refuses(gateway, acme, globex):
    """Measured on another tenant (its summaries are its own), then refused here: main alone would fit."""
    conversation = long_conversation()
    body = {"model": "default", "messages": conversation, "max_tokens": 1000}
    publish(globex, COMPRESS)
    measured_main, measured_summary = rows_of(chat(gateway, globex, body))
    main_worst = worst_case(choices=1, max_tokens=1000, prompt_tokens=measured_main.prompt_tokens)
    limit = main_worst + quantum(measured_summary.cost_usd / 2)
    publish(acme, COMPRESS)
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)

    response = chat(gateway, acme, body)

    assert response.status_code == 429, response.text
    message = response.json()["error"]["message"]
    left = limit - measured_summary.cost_usd
    spent = usd(measured_summary.cost_usd)
    assert f"cannot hold this request's worst case of {usd(main_worst)}: {spent} spent" in message
    assert f"{usd(left)} remains." in message
    main, summary = rows_of(response)
    assert main.error_code == "budget_exceeded"
    assert summary.cost_usd == measured_summary.cost_usd
    assert UsageRecord.objects.unscoped().filter(tenant=acme.tenant).aggregate(spent=Sum("cost_usd"))["spent"] <= limit


def test_a_summary_the_budget_cannot_cover_refuses_the_request_before_it_is_made(gateway, acme, mock_upstream):
    publish(acme, COMPRESS)
    limit = Decimal("0.00005")
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)
    served_before = mock_upstream.app.requests_served

    response = chat(gateway, acme, {"model": acme.small.name, "messages": long_conversation(), "max_tokens": 10})

    assert response.status_code == 429, response.text
    assert response.json()["error"]["message"].startswith(
        "Compressing this request needs a summary of the dropped turns, and the budget cannot cover it. Budget "
    )
    assert mock_upstream.app.requests_served == served_before
    main, summary = rows_of(response)
    assert main.error_code == "budget_exceeded" and summary is None


def test_without_max_tokens_the_models_maximum_output_is_reserved_for_every_choice(gateway, acme):
    acme.small.max_output_tokens = 1000
    acme.small.save()
    limit = worst_case(choices=2, max_tokens=1000) - Decimal("0.0000001")
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)
    headers = {"authorization": f"Bearer {acme.key}"}

    refused = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=headers,
        json={"model": acme.small.name, "messages": MESSAGES, "n": 2},
    )
    answered = httpx.post(
        f"{gateway.url}/v1/chat/completions", headers=headers, json={"model": acme.small.name, "messages": MESSAGES}
    )

    assert refused.status_code == 429
    assert (
        f"cannot hold this request's worst case of {usd(worst_case(choices=2, max_tokens=1000))}: "
        in (refused.json()["error"]["message"])
    )
    assert refused.json()["error"]["message"].endswith("With max_tokens=999 per choice (2 choices) it would fit.")
    # One choice of up to 1,000 tokens fits.
    assert answered.status_code == 200, answered.text


def test_a_failed_summary_is_recorded_releases_its_reservation_and_only_costs_the_summary(gateway, acme):
    failing = ModelFactory(name="acme-failing", provider=acme.small.provider, upstream_name="fail-503")
    tenant_model_access_set(tenant=acme.tenant, allowed_models=[acme.small, acme.large, failing], default_model=failing)
    publish(acme, COMPRESS)
    limit = Decimal("1")
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)

    response = chat(gateway, acme, {"model": acme.small.name, "messages": long_conversation(), "max_tokens": 10})

    assert response.status_code == 200, response.text
    main, summary = rows_of(response)
    assert (summary.http_status, summary.error_code, summary.cost_usd) == (502, "upstream_error", 0)
    assert summary.served_model == failing.name
    assert Decimal(response.headers["x-llmops-budget-remaining-usd"]) == limit - main.cost_usd


def test_a_summary_its_client_hung_up_on_is_recorded_charged_its_prompt_and_gives_its_reservation_back(gateway, acme):
    stalling = ModelFactory(name="acme-stalling", provider=acme.small.provider, upstream_name="stall")
    tenant_model_access_set(
        tenant=acme.tenant, allowed_models=[acme.small, acme.large, stalling], default_model=stalling
    )
    publish(acme, COMPRESS)
    limit = Decimal("1")
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=limit)
    body = {"model": acme.small.name, "messages": long_conversation(), "max_tokens": 10}

    with pytest.raises(httpx.ReadTimeout):  # the summary stalls upstream; the client gives up
        httpx.post(
            f"{gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {acme.key}"}, json=body, timeout=1
        )

    summaries = UsageRecord.objects.unscoped().filter(tenant=acme.tenant, kind=UsageKind.COMPRESSION_SUMMARY)
    deadline = time.monotonic() + 10
    while not summaries.exists():
        assert time.monotonic() < deadline, "the summary cut short left no ledger row"
        time.sleep(0.05)
    summary = summaries.get()
    assert (summary.http_status, summary.error_code, summary.served_model) == (
        499,
        "client_disconnected",
        stalling.name,
    )
    assert summary.prompt_tokens > 0 and summary.cost_usd > 0
    after = chat(gateway, acme, {"model": acme.small.name, "messages": MESSAGES, "max_tokens": 10})
    main = UsageRecord.objects.unscoped().get(request_id=after.headers["x-llmops-request-id"])
    assert Decimal(after.headers["x-llmops-budget-remaining-usd"]) == limit - summary.cost_usd - main.cost_usd


def vision_model(acme):
    """A model the catalog knows images for (gpt-4o-mini: up to 48,169 tokens an image), served by the mock."""
    model = ModelFactory(
        name="acme-vision",
        provider=acme.small.provider,
        upstream_name="gpt-4o-mini",
        input_price_per_million=SMALL_PRICES[0],
        cached_input_price_per_million=SMALL_PRICES[1],
        output_price_per_million=SMALL_PRICES[2],
    )
    tenant_model_access_set(tenant=acme.tenant, allowed_models=[acme.small, acme.large, model], default_model=model)
    return model


def with_image(detail: str) -> list[dict]:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/receipt.png", "detail": detail}}
    return [{"role": "user", "content": [{"type": "text", "text": "What does this receipt total?"}, image]}]


def test_an_image_is_reserved_at_the_most_its_model_bills_for_it(gateway, acme):
    model = vision_model(acme)
    text = count_chat_tokens(with_image("high"), model="gpt-4o-mini")
    low_worst = worst_case(choices=1, prompt_tokens=text + 2833)
    budget_create(tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=low_worst)
    headers = {"authorization": f"Bearer {acme.key}"}

    def ask(detail: str) -> httpx.Response:
        body = {"model": model.name, "messages": with_image(detail), "max_tokens": MAX_TOKENS}
        return httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers, json=body)

    high = ask("high")
    assert high.status_code == 429, high.text
    high_worst = usd(worst_case(choices=1, prompt_tokens=text + 2833 + 8 * 5667))
    assert f"cannot hold this request's worst case of {high_worst}" in high.json()["error"]["message"]
    assert high.json()["error"]["message"].endswith("send a shorter prompt or fewer images or files.")
    low = ask("low")
    assert low.status_code == 200, low.text


def test_a_token_rate_limit_counts_an_image_at_its_bound(gateway, acme):
    model = vision_model(acme)
    text = count_chat_tokens(with_image("low"), model="gpt-4o-mini")
    rate_limit_create(tenant=acme.tenant, api_key=acme.api_key, tokens_per_minute=text + MAX_TOKENS + 2833)
    headers = {"authorization": f"Bearer {acme.key}"}
    body = {"model": model.name, "max_tokens": MAX_TOKENS}

    high = httpx.post(
        f"{gateway.url}/v1/chat/completions", headers=headers, json={**body, "messages": with_image("high")}
    )
    low = httpx.post(
        f"{gateway.url}/v1/chat/completions", headers=headers, json={**body, "messages": with_image("low")}
    )

    assert high.status_code == 429 and high.json()["error"]["code"] == "rate_limit_exceeded"
    # No minute could ever admit it: the client is told not to retry, and nothing was counted.
    limit = text + MAX_TOKENS + 2833
    requested = text + 2833 + 8 * 5667 + MAX_TOKENS
    assert high.json()["error"]["message"].startswith(
        f"Request too large for your key: it counts {requested} tokens (the prompt, its images and files at the most "
    )
    assert f"the limit is {limit} tokens per minute, so no retry can succeed." in high.json()["error"]["message"]
    assert high.headers["x-should-retry"] == "false" and "retry-after" not in high.headers
    # Where the limits stand, as on every answer: nothing of the minute used yet.
    assert (high.headers["x-ratelimit-limit-tokens"], high.headers["x-ratelimit-remaining-tokens"]) == (
        str(limit),
        str(limit),
    )
    assert low.status_code == 200, low.text
    assert int(low.headers["x-ratelimit-remaining-tokens"]) < limit
