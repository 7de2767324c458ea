"""An upstream that fails, stalls, cannot be reached or answers what cannot be priced becomes a clear 502/504 and a
ledger row."""

from decimal import Decimal

import httpx
import openai
import orjson
import pytest
from django.utils import timezone

from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_create
from billing.models import UsageKind, UsageRecord
from llmops.mock_upstream import MALFORMED_BODIES, MALFORMED_USAGE
from routing.tokens import count_chat_tokens, count_definition_tokens, count_text_tokens
from tests.factories import ModelFactory, ProviderFactory
from tests.gateway.test_routing_live import publish
from tests.providers.asgi import end_stream, read_body, send_chunk, send_json, start_stream
from tests.servers import free_port, serving

MALFORMED_KINDS = [*MALFORMED_USAGE, *MALFORMED_BODIES]


def allow(setup, model):
    setup.tenant.model_access.allowed_models.add(model)


@pytest.fixture
def failing_model(acme, mock_upstream):
    def make(upstream_name, *, base_url=None, timeout=Decimal("5")):
        provider = ProviderFactory(base_url=base_url or f"{mock_upstream.url}/v1", timeout_seconds=timeout)
        model = ModelFactory(name=upstream_name, provider=provider, upstream_name=upstream_name)
        allow(acme, model)
        return model

    return make


def test_upstream_5xx_is_a_502(openai_client, failing_model):
    model = failing_model("mock-fail-503")

    with pytest.raises(openai.InternalServerError) as excinfo:
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.status_code == 502
    assert "503" in excinfo.value.message
    record = UsageRecord.objects.unscoped().get()
    assert (record.http_status, record.error_code, record.served_model) == (502, "upstream_error", model.name)
    assert record.upstream_latency_ms is not None and record.cost_usd == 0


def test_upstream_429_is_a_429(openai_client, failing_model):
    model = failing_model("mock-fail-429")

    with pytest.raises(openai.RateLimitError):
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert UsageRecord.objects.unscoped().get().error_code == "upstream_rate_limited"


def test_an_upstream_429_the_gateway_would_not_wait_for_passes_its_retry_after_on(openai_client, failing_model):
    """A provider's Retry-After over the retry policy's longest wait is not waited for: the client is told it."""
    model = failing_model("mock-fail-429-retry-after-30")
    raw = openai_client.chat.completions.with_raw_response

    with pytest.raises(openai.RateLimitError) as excinfo:
        raw.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.response.headers["retry-after"] == "30"
    assert excinfo.value.code == "upstream_rate_limited"


def test_an_upstream_400_keeps_the_parameter_the_provider_named(openai_client, failing_model):
    model = failing_model("mock-fail-400-param-messages")

    with pytest.raises(openai.BadRequestError) as excinfo:
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert (excinfo.value.code, excinfo.value.param) == ("upstream_invalid_request", "messages")


def test_upstream_connection_error_is_a_502(openai_client, failing_model):
    model = failing_model("mock-small", base_url=f"http://127.0.0.1:{free_port()}/v1")

    with pytest.raises(openai.InternalServerError) as excinfo:
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.status_code == 502
    assert UsageRecord.objects.unscoped().get().error_code == "upstream_connection_error"


def test_upstream_timeout_is_a_504(openai_client, failing_model):
    model = failing_model("mock-stall", timeout=Decimal("0.5"))

    with pytest.raises(openai.InternalServerError) as excinfo:
        openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.status_code == 504
    record = UsageRecord.objects.unscoped().get(kind=UsageKind.REQUEST)
    assert record.error_code == "upstream_timeout" and record.upstream_latency_ms >= 450


def test_stream_cut_short_is_an_error_event_and_an_error_row(openai_client, failing_model):
    model = failing_model("mock-break")

    with pytest.raises(openai.APIError) as excinfo:
        list(
            openai_client.chat.completions.create(
                model=model.name, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )

    assert "before [DONE]" in excinfo.value.message
    # The stream's last event is OpenAI's whole error object, `param` included.
    assert excinfo.value.body == {
        "message": excinfo.value.message,
        "type": "api_error",
        "param": None,
        "code": "upstream_stream_truncated",
    }
    record = UsageRecord.objects.unscoped().get()
    assert (record.http_status, record.error_code) == (502, "upstream_stream_truncated")
    assert record.completion_tokens > 0 and record.usage_estimated and record.cost_usd > 0


def test_missing_usage_is_estimated_with_tiktoken(openai_client, failing_model):
    model = failing_model("mock-no-usage")

    completion = openai_client.chat.completions.create(
        model=model.name, messages=[{"role": "user", "content": "Count my tokens please"}]
    )

    assert completion.usage is None
    record = UsageRecord.objects.unscoped().get()
    assert record.usage_estimated and record.prompt_tokens > 0 and record.completion_tokens > 0


def test_an_estimated_answer_is_charged_no_more_than_the_request_let_the_model_write(openai_client, failing_model):
    """tiktoken's count of the answer can go past max_tokens (another tokenizer wrote it); the provider bills at most
    max_tokens a choice, and the budget reserved no more: the charge stays within the reservation."""
    model = failing_model("gpt-4o-no-usage")

    openai_client.chat.completions.create(
        model=model.name, messages=[{"role": "user", "content": "describe"}], max_tokens=5, n=2
    )

    record = UsageRecord.objects.unscoped().get()
    assert record.usage_estimated and 0 < record.completion_tokens <= 2 * 5


def test_missing_usage_charges_an_image_at_the_bound_it_was_reserved_at(openai_client, failing_model):
    """The gateway cannot count an image's tokens; charging none would let a provider without usage (or a client that
    leaves a stream) spend past a budget that reserved them."""
    model = failing_model("gpt-4o-no-usage")
    content = [
        {"type": "text", "text": "Count my tokens please"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
    ]
    text_only = [{"role": "user", "content": [content[0]]}]

    openai_client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": content}])

    record = UsageRecord.objects.unscoped().get()
    # gpt-4o bills a low-detail image 85 tokens.
    assert record.usage_estimated and record.prompt_tokens == count_chat_tokens(text_only, model="gpt-4o") + 85


def test_a_stream_asked_for_usage_gets_the_gateways_count_when_the_upstream_sends_none(openai_client, failing_model):
    model = failing_model("mock-no-usage")

    chunks = list(
        openai_client.chat.completions.create(
            model=model.name,
            messages=[{"role": "user", "content": "Count my tokens please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    record = UsageRecord.objects.unscoped().get()
    last = chunks[-1]
    assert record.usage_estimated and record.completion_tokens > 0
    assert last.choices == [] and last.id == chunks[0].id and last.model == chunks[0].model
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        record.prompt_tokens,
        record.completion_tokens,
        record.prompt_tokens + record.completion_tokens,
    )
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_client_disconnect_mid_stream_charges_what_was_generated(gateway, acme, failing_model):
    model = failing_model("mock-slow-stream")
    body = {"model": model.name, "messages": [{"role": "user", "content": "a long answer"}], "stream": True}

    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {acme.key}"}
    ) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
    assert received[0].startswith("data: ")

    record = wait_for_record()
    assert (record.http_status, record.error_code) == (499, "client_disconnected")
    assert 0 < record.completion_tokens < 24 and record.usage_estimated


def test_a_client_that_leaves_before_a_complete_answer_is_charged_its_prompt_and_settled(gateway, acme, failing_model):
    """The server cancels the request's task when its client goes away; the row and the settlement still happen."""
    budget = budget_create(tenant=acme.tenant, limit_usd=Decimal("1"), period="day")
    model = failing_model("mock-stall", timeout=Decimal("20"))
    body = {"model": model.name, "messages": [{"role": "user", "content": "an answer that never comes"}]}

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {acme.key}"},
            timeout=httpx.Timeout(10, read=1),
        )

    record = wait_for_record()
    assert (record.http_status, record.error_code) == (499, "client_disconnected")
    assert record.usage_estimated and record.prompt_tokens > 0 and record.completion_tokens == 0
    assert record.cost_usd > 0
    status = budget_status(budget=budget, now=timezone.now())
    assert status.reserved_usd == 0 and status.spent_usd == record.cost_usd


def wait_for_record(timeout: float = 10.0) -> UsageRecord:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = UsageRecord.objects.unscoped().first()
        if record is not None:
            return record
        time.sleep(0.05)
    raise AssertionError("no ledger row was written")


def ask(gateway, setup, model: str, *, stream: bool) -> tuple[httpx.Response, str]:
    body = {"model": model, "messages": [{"role": "user", "content": "a short answer please"}], "stream": stream}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {setup.key}"},
        timeout=30,
    ) as response:
        return response, response.read().decode()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
def test_a_malformed_answer_is_a_502_with_an_estimated_row_and_its_reservation_settled(
    gateway, acme, failing_model, stream
):
    budget = budget_create(tenant=acme.tenant, limit_usd=Decimal("1"), period="day")

    for kind in MALFORMED_KINDS:
        model = failing_model(f"mock-malformed-{kind}")
        response, text = ask(gateway, acme, model.name, stream=stream)

        request_id = response.headers["x-llmops-request-id"]
        if stream:
            last_event = text.strip().rsplit("\n\n", 1)[-1]
            assert response.status_code == 200 and "[DONE]" not in text, (kind, text)
            error = orjson.loads(last_event.removeprefix("data: "))["error"]
        else:
            assert response.status_code == 502, (kind, text)
            assert response.headers["content-type"] == "application/json"
            error = orjson.loads(text)["error"]
        assert error["code"] == "upstream_invalid_response", (kind, error)
        record = UsageRecord.objects.unscoped().get(request_id=request_id)
        assert (record.http_status, record.error_code, record.served_model) == (502, error["code"], model.name)
        assert record.usage_estimated and record.prompt_tokens > 0 and record.cost_usd >= 0, kind
        if stream or kind in MALFORMED_USAGE:
            assert record.completion_tokens > 0, kind  # the answer's text arrived and is counted

    assert budget_status(budget=budget, now=timezone.now()).reserved_usd == 0
    response, _ = ask(gateway, acme, acme.small.name, stream=stream)
    assert response.status_code == 200


def test_a_malformed_answer_falls_back_down_the_chain(gateway, acme, failing_model):
    malformed = failing_model("mock-malformed-usage-negative")
    publish(
        acme,
        [
            {
                "priority": 1,
                "name": "malformed-first",
                "match": {"requested_models": ["auto"]},
                "outcome": {"target_model": malformed.name, "fallback_models": [acme.small.name]},
            }
        ],
        aliases={"auto": {"small": acme.small.name, "large": acme.large.name}},
    )

    response, text = ask(gateway, acme, "auto", stream=False)

    assert response.status_code == 200, text
    record = UsageRecord.objects.unscoped().get(kind=UsageKind.REQUEST)
    assert (record.served_model, record.attempts, record.usage_estimated) == (acme.small.name, 3, False)
    assert record.cost_usd > 0


def test_a_malformed_flex_answer_is_charged_its_estimate_at_the_flex_share(gateway, acme, failing_model):
    model = failing_model("mock-malformed-usage-negative")
    model.flex_price_multiplier = Decimal("0.5")
    model.save(update_fields=["flex_price_multiplier"])
    body = {"model": model.name, "messages": [{"role": "user", "content": "a short answer"}], "service_tier": "flex"}

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {acme.key}"}, timeout=30
    )

    assert response.status_code == 502
    record = UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])
    assert record.usage_estimated and record.cost_usd > 0
    assert record.saved_batch_usd == record.cost_usd


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_tool_call_without_usage_is_charged_the_arguments_the_model_wrote(openai_client, failing_model, stream):
    """A call's name and arguments are output the provider bills; the gateway's own count, when the provider sends
    no usage, counts them as it counts content."""
    model = failing_model("gpt-4o-tool-call-no-usage")
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    messages = [{"role": "user", "content": "Look my order up please"}]

    answer = openai_client.chat.completions.create(model=model.name, messages=messages, tools=[tool], stream=stream)

    if stream:
        pieces = [chunk.choices[0].delta.tool_calls for chunk in answer if chunk.choices]
        arguments = "".join(call[0].function.arguments for call in pieces if call)
    else:
        arguments = answer.choices[0].message.tool_calls[0].function.arguments
    record = UsageRecord.objects.unscoped().get()
    assert arguments.startswith("Mock answer to: Look my order up")
    assert record.usage_estimated
    assert record.completion_tokens == count_text_tokens("lookup" + arguments, model="gpt-4o")
    # The prompt is counted as the provider bills it: the tool's definition with the messages.
    assert record.prompt_tokens == count_chat_tokens(messages, model="gpt-4o") + count_definition_tokens(
        {"tools": [tool]}, model="gpt-4o"
    )


# What a reasoning model thinks before it answers, billed as output tokens like the answer.
THOUGHT = "The user wants a short answer. Refunds take five to seven business days, so I should say that plainly."


class ThinkingUpstream:
    """An OpenAI-compatible reasoning model that reports no usage and thinks aloud: THOUGHT in ``reasoning_content``
    before a complete ``answer``; streamed under both ``reasoning_content`` and ``reasoning`` (as vLLM has sent it), a
    stream that ends while the model is still thinking."""

    def __init__(self, answer: str = "Five to seven days."):
        self.answer = answer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = orjson.loads(await read_body(receive))
        if not body.get("stream"):
            message = {"role": "assistant", "content": self.answer, "reasoning_content": THOUGHT}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            await send_json(send, 200, {"id": "t", "object": "chat.completion", "model": "t", "choices": [choice]})
            return
        await start_stream(send, b"text/event-stream")
        for piece in THOUGHT.split(" "):
            choice = {"index": 0, "delta": {"reasoning_content": f"{piece} ", "reasoning": f"{piece} "}}
            chunk = {"id": "t", "object": "chat.completion.chunk", "model": "t", "choices": [choice]}
            await send_chunk(send, b"data: " + orjson.dumps(chunk) + b"\n\n")
        await end_stream(send)


@pytest.fixture(scope="module")
def thinking_upstream():
    yield from serving(ThinkingUpstream())


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "cut-while-thinking"])
def test_a_reasoning_models_thinking_is_charged_when_it_reports_no_usage(gateway, acme, thinking_upstream, stream):
    """The provider bills the reasoning it wrote as output: the gateway's own count charges it, once, with the
    answer (a stream cut while the model thought was charged nothing written)."""
    model = ModelFactory(name="thinker", provider=ProviderFactory(base_url=f"{thinking_upstream.url}/v1"))
    allow(acme, model)

    ask(gateway, acme, model.name, stream=stream)

    written = THOUGHT + " " if stream else THOUGHT + "Five to seven days."
    record = UsageRecord.objects.unscoped().get()
    assert record.http_status == (502 if stream else 200) and record.usage_estimated
    assert record.completion_tokens == count_text_tokens(written, model=model.upstream_name)
