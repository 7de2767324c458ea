"""POST /v1/responses through the live gateway: the official SDK plain and streamed, the chat pipeline's routing,
caps, cache and budgets under it, the ledger, and what answers `unsupported`."""

from decimal import Decimal

import httpx
import openai
import pytest

from billing.budgets.services import budget_create
from billing.ledger.costs import usage_cost
from billing.models import UsageRecord
from routing.cache.store import cache_writes_flush
from routing.catalog import ModelPrices
from routing.policy.drafts import policy_draft_replace
from routing.services import routing_policy_create, routing_policy_create_default, routing_policy_publish
from routing.tokens import count_chat_tokens
from tests.conftest import SMALL_PRICES
from tests.factories import ModelFactory
from tests.gateway.test_upstream_failures import wait_for_record

QUESTION = "What is the capital of France?"
INSTRUCTIONS = "Answer in one word."
QUESTION_PART = {"type": "input_text", "text": QUESTION}
REFUSAL_PART = {"type": "refusal", "refusal": "I can't help with that."}
STREAM_EVENTS_BEFORE_TEXT = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
STREAM_EVENTS_AFTER_TEXT = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
def gateway(gateway):
    """The live gateway, whose queued cache writes land before the test's rows are flushed."""
    yield gateway
    cache_writes_flush()


def respond(gateway, setup, body, headers=None):
    return httpx.post(
        f"{gateway.url}/v1/responses",
        json=body,
        headers={"authorization": f"Bearer {setup.key}", **(headers or {})},
        timeout=30,
    )


def ledger(response) -> UsageRecord:
    return UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])


def small_cost(prompt_tokens: int, completion_tokens: int) -> Decimal:
    return usage_cost(
        prices=ModelPrices(*SMALL_PRICES),
        prompt_tokens=prompt_tokens,
        cached_tokens=0,
        completion_tokens=completion_tokens,
    )


def publish(setup, rules):
    policy = routing_policy_create(tenant=setup.tenant)
    policy_draft_replace(policy=policy, document={"aliases": {}, "rules": rules})
    routing_policy_publish(policy=policy, actor=None)


def test_the_sdk_s_response_is_recorded_with_its_cost(openai_client, acme):
    raw = openai_client.responses.with_raw_response.create(
        model=acme.small.name, input=QUESTION, instructions=INSTRUCTIONS, max_output_tokens=12, user="customer-7"
    )
    response = raw.parse()

    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    assert response.output_text.startswith("Mock answer to: What is the capital")
    [message] = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert [part.type for part in message.content] == ["output_text"]
    assert (response.instructions, response.max_output_tokens, response.user) == (INSTRUCTIONS, 12, "customer-7")
    # The instructions are the system prompt: both are billed as input.
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
    prompt_tokens = count_chat_tokens(messages, model="mock-small")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (prompt_tokens, 12)
    assert response.usage.total_tokens == prompt_tokens + 12
    record = UsageRecord.objects.unscoped().get()
    assert response.id == f"resp_{record.request_id.removeprefix('req_')}"
    assert (record.endpoint, record.requested_model, record.served_model, record.is_stream) == (
        "/v1/responses",
        acme.small.name,
        acme.small.name,
        False,
    )
    assert (record.prompt_tokens, record.completion_tokens, record.http_status) == (prompt_tokens, 12, 200)
    assert record.customer == "customer-7"
    assert record.cost_usd == small_cost(prompt_tokens, 12) > 0
    assert record.price_version == acme.small.price_in_force()
    assert Decimal(raw.headers["x-llmops-cost-usd"]) == record.cost_usd
    assert raw.headers["x-llmops-model"] == acme.small.name
    assert raw.headers["x-llmops-request-id"] == record.request_id


def test_the_sdk_s_stream_has_every_event_in_order_and_is_recorded(openai_client, acme):
    events = list(
        openai_client.responses.create(model=acme.small.name, input=QUESTION, max_output_tokens=8, stream=True)
    )

    types = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert types == STREAM_EVENTS_BEFORE_TEXT + ["response.output_text.delta"] * len(deltas) + STREAM_EVENTS_AFTER_TEXT
    assert len(deltas) == 8
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(delta.delta for delta in deltas)
    assert text.startswith("Mock answer to: What is")
    done = events[-4]
    assert done.text == text
    completed = events[-1].response
    assert completed.id == events[0].response.id and completed.status == "completed"
    assert completed.output_text == text
    record = UsageRecord.objects.unscoped().get()
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (record.prompt_tokens, 8)
    assert record.is_stream and not record.usage_estimated
    assert record.endpoint == "/v1/responses"
    assert record.cost_usd == small_cost(record.prompt_tokens, 8) > 0


def test_the_sdk_s_stream_helper_assembles_the_final_response(openai_client, acme):
    with openai_client.responses.stream(model=acme.small.name, input=QUESTION, max_output_tokens=6) as stream:
        final = stream.get_final_response()

    assert final.status == "completed"
    assert final.output_text.startswith("Mock answer to:")
    assert final.usage.output_tokens == 6


def test_a_conversation_of_text_items_is_the_chat_it_stands_for(openai_client, acme):
    conversation = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Blue."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Another"}, {"type": "input_text", "text": "?"}]},
    ]

    response = openai_client.responses.create(model=acme.small.name, input=conversation, max_output_tokens=10)

    assert response.output_text.startswith("Mock answer to: Another ?")
    chat_messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]},
        {"role": "user", "content": [{"type": "text", "text": "Another"}, {"type": "text", "text": "?"}]},
    ]
    assert response.usage.input_tokens == count_chat_tokens(chat_messages, model="mock-small")


def test_a_refusal_part_is_taken_back_from_an_assistant_item(gateway, acme):
    conversation = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [REFUSAL_PART]},
        {"role": "user", "content": "Please?"},
    ]

    response = respond(gateway, acme, {"model": acme.small.name, "input": conversation, "max_output_tokens": 5})

    assert response.status_code == 200, response.text
    [message] = response.json()["output"]
    assert message["content"][0]["text"].startswith("Mock answer to: Please?")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "unsupported_parameter", "tools"),
        ({"tool_choice": "required"}, "unsupported_value", "tool_choice"),
        ({"previous_response_id": "resp_123"}, "unsupported_parameter", "previous_response_id"),
        ({"conversation": "conv_123"}, "unsupported_parameter", "conversation"),
        ({"store": True}, "unsupported_value", "store"),
        ({"background": True}, "unsupported_value", "background"),
        ({"prompt": {"id": "pmpt_1"}}, "unsupported_parameter", "prompt"),
        ({"include": ["message.output_text.logprobs"]}, "unsupported_parameter", "include"),
        ({"truncation": "auto"}, "unsupported_value", "truncation"),
        ({"reasoning": {"summary": "auto"}}, "unsupported_parameter", "reasoning.summary"),
        ({"frobnicate": 1}, "unsupported_parameter", "frobnicate"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            "unsupported_value",
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "4"}]}, "unsupported_value", None),
        ({"input": None}, "missing_required_parameter", "input"),
        ({"input": []}, "empty_array", "input"),
        ({"input": 7}, "invalid_type", "input"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "invalid_value", "input[0].role"),
        ({"input": [{"role": "user"}]}, "missing_required_parameter", "input[0].content"),
        ({"max_output_tokens": 0}, "invalid_value", "max_output_tokens"),
        ({"temperature": 3}, "invalid_value", "temperature"),
        ({"text": {"format": {"type": "xml"}}}, "invalid_value", "text.format.type"),
        ({"stream_options": {"include_obfuscation": False}}, "invalid_value", "stream_options"),
        # A field inside an object is refused as one at the top is, by its path; a value outside an enum too.
        ({"text": {"foo": 1}}, "unsupported_parameter", "text.foo"),
        ({"text": {"format": {"type": "text", "foo": 1}}}, "unsupported_parameter", "text.format.foo"),
        (
            {"text": {"format": {"type": "json_schema", "name": "n", "schema": {}, "foo": 1}}},
            "unsupported_parameter",
            "text.format.foo",
        ),
        ({"text": {"verbosity": "loud"}}, "invalid_value", "text.verbosity"),
        ({"reasoning": {"effort": "extreme"}}, "invalid_value", "reasoning.effort"),
        ({"service_tier": "zzz"}, "invalid_value", "service_tier"),
        # Billed above the catalog's prices: no budget could hold it.
        ({"service_tier": "priority"}, "unsupported_parameter", "service_tier"),
        ({"reasoning": {"foo": 1}}, "unsupported_parameter", "reasoning.foo"),
        ({"stream": True, "stream_options": {"foo": True}}, "unsupported_parameter", "stream_options.foo"),
        (
            {"stream": True, "stream_options": {"include_usage": True}},
            "unsupported_parameter",
            "stream_options.include_usage",
        ),
        ({"input": [{"role": "user", "content": "hi", "foo": 1}]}, "unsupported_parameter", "input[0].foo"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi", "foo": 1}]}]},
            "unsupported_parameter",
            "input[0].content[0].foo",
        ),
        # Named by the client's own path, not that of the chat message it becomes (`instructions` is one more).
        ({"input": [{"role": "user", "content": []}]}, "empty_array", "input[0].content"),
        ({"instructions": "Be brief.", "input": [{"role": "user", "content": []}]}, "empty_array", "input[0].content"),
        (
            {"input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": []}]},
            "empty_array",
            "input[1].content",
        ),
        *(
            ({"input": [{"role": role, "content": [REFUSAL_PART]}]}, "invalid_value", "input[0].content[0].type")
            for role in ("user", "system", "developer")
        ),
        (
            {"instructions": "Be brief.", "input": [{"role": "user", "content": [QUESTION_PART, REFUSAL_PART]}]},
            "invalid_value",
            "input[0].content[1].type",
        ),
    ],
)
def test_what_is_not_supported_or_not_valid_is_an_openai_400(gateway, acme, body, code, param):
    response = respond(gateway, acme, {"model": acme.small.name, "input": "hi", **body})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    expected_param = param if param is not None else "input[0].type"
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, expected_param)
    assert f"'{expected_param}'" in error["message"]
    record = ledger(response)
    assert (record.endpoint, record.http_status, record.error_code, record.cost_usd) == (
        "/v1/responses",
        400,
        code,
        0,
    )


@pytest.mark.parametrize(
    ("body", "param", "why"),
    [
        ({"reasoning": {"foo": 1}}, "reasoning.foo", "it is not a parameter this gateway knows"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary", "reasoning summaries are not returned"),
        (
            {"stream": True, "stream_options": {"include_usage": True}},
            "stream_options.include_usage",
            "a Responses stream always carries the usage, in its `response.completed` event",
        ),
        ({"text": {"verbosity": "loud"}}, "text.verbosity", "'loud'. Supported values are: 'low', 'medium', 'high'."),
    ],
)
def test_a_refusal_says_why(gateway, acme, body, param, why):
    response = respond(gateway, acme, {"model": acme.small.name, "input": "hi", **body})

    error = response.json()["error"]
    assert error["param"] == param
    assert why in error["message"]


def test_an_earlier_answer_sent_back_as_it_came_continues_the_conversation(openai_client, acme):
    first = openai_client.responses.create(
        model=acme.small.name,
        input=QUESTION,
        max_output_tokens=5,
        text={"verbosity": "low"},
        reasoning={"effort": "minimal"},
    )
    conversation = [
        {"role": "user", "content": QUESTION},
        *(item.model_dump() for item in first.output),
        {"role": "user", "content": [{"type": "input_text", "text": "And of Spain?"}]},
    ]

    second = openai_client.responses.create(model=acme.small.name, input=conversation, max_output_tokens=10)

    assert (first.text.verbosity, first.reasoning.effort) == ("low", "minimal")
    assert second.output_text.startswith("Mock answer to: And of Spain?")


def test_the_responses_endpoints_not_offered_say_why(openai_client, acme):
    not_offered = {
        "retrieve": (lambda: openai_client.responses.retrieve("resp_123"), "responses are not stored"),
        "delete": (lambda: openai_client.responses.delete("resp_123"), "responses are not stored"),
        "cancel": (lambda: openai_client.responses.cancel("resp_123"), "responses are not stored"),
        "input_items": (lambda: openai_client.responses.input_items.list("resp_123"), "responses are not stored"),
        "input_tokens": (
            lambda: openai_client.responses.input_tokens.count(model=acme.small.name, input="hi"),
            "does not count the input tokens of a Responses request. It counts those of an Anthropic Messages "
            "request at POST /v1/messages/count_tokens",
        ),
        "compact": (
            lambda: openai_client.responses.compact(model=acme.small.name, input="hi"),
            "compaction is not supported",
        ),
    }

    for name, (call, why) in not_offered.items():
        with pytest.raises(openai.BadRequestError) as refused:
            call()

        assert refused.value.code == "unsupported_endpoint", name
        assert why in refused.value.message, refused.value.message
    assert not UsageRecord.objects.unscoped().exists()


def test_other_paths_under_responses_are_unknown_urls(gateway, acme):
    unknown = [
        ("GET", "/v1/responses/resp_123/foo"),
        ("POST", "/v1/responses/resp_123/cancel/now"),
        ("GET", "/v1/responses/resp_123/input_items/item_1"),
        ("POST", "/v1/responses/input_tokens/count"),
    ]
    for headers in ({"authorization": f"Bearer {acme.key}"}, {}):
        for method, path in unknown:
            response = httpx.request(method, f"{gateway.url}{path}", headers=headers)

            error = response.json()["error"]
            assert (response.status_code, error["code"]) == (404, "unknown_url"), (method, path, response.text)
            assert error["message"].startswith(f"Unknown request URL: {method} {path}.")
    wrong_method = httpx.get(
        f"{gateway.url}/v1/responses/resp_123/cancel", headers={"authorization": f"Bearer {acme.key}"}
    )
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")
    assert not UsageRecord.objects.unscoped().exists()


def test_a_budget_refusal_names_the_max_output_tokens_that_would_fit(gateway, acme):
    messages = [{"role": "user", "content": QUESTION}]
    prompt_tokens = count_chat_tokens(messages, model="mock-small")
    budget_create(
        tenant=acme.tenant, scope="key", api_key=acme.api_key, period="day", limit_usd=small_cost(prompt_tokens, 100)
    )

    refused = respond(gateway, acme, {"model": acme.small.name, "input": QUESTION, "max_output_tokens": 500})
    fitting = respond(gateway, acme, {"model": acme.small.name, "input": QUESTION, "max_output_tokens": 100})

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
    assert "With max_output_tokens=100 it would fit." in error["message"]
    # As sent it is over the budget's whole limit: no period could hold it.
    assert refused.headers["x-should-retry"] == "false" and "retry-after" not in refused.headers
    assert ledger(refused).error_code == "budget_exceeded"
    assert fitting.status_code == 200, fitting.text
    assert fitting.headers["x-llmops-budget-remaining-usd"]


def test_routing_and_caps_apply_to_a_response(gateway, acme):
    publish(
        acme,
        [
            {
                "priority": 10,
                "name": "small-and-short",
                "match": {"requested_models": [acme.large.name]},
                "outcome": {"target_model": acme.small.name, "max_tokens_cap": 5, "prompt_token_cap": 40},
            }
        ],
    )

    capped = respond(gateway, acme, {"model": acme.large.name, "input": QUESTION, "max_output_tokens": 100})
    too_long = respond(gateway, acme, {"model": acme.large.name, "input": "word " * 100})

    assert capped.status_code == 200, capped.text
    assert capped.headers["x-llmops-model"] == acme.small.name
    assert "rule=small-and-short" in capped.headers["x-llmops-route"]
    assert capped.json()["usage"]["output_tokens"] == 5
    record = ledger(capped)
    assert (record.served_model, record.completion_tokens, record.route) == (acme.small.name, 5, "small-and-short")
    assert record.saved_routing_usd > 0
    assert too_long.status_code == 400
    assert (too_long.json()["error"]["code"], too_long.json()["error"]["param"]) == ("token_cap_exceeded", "input")


def test_auto_is_routed_by_the_tenant_s_policy(gateway, acme):
    routing_policy_create_default(tenant=acme.tenant, small_model=acme.small, large_model=acme.large)

    response = respond(gateway, acme, {"model": "auto", "input": "Say hi", "metadata": {"task_type": "classification"}})

    assert response.status_code == 200, response.text
    assert response.headers["x-llmops-model"] == acme.small.name
    assert "rule=short-classification-and-summaries" in response.headers["x-llmops-route"]


def test_a_repeated_response_is_answered_from_the_cache_plain_and_streamed(gateway, acme, mock_upstream):
    publish(acme, [{"priority": 10, "name": "cache-all", "outcome": {"cache_ttl_seconds": 600}}])
    body = {"model": acme.small.name, "input": QUESTION, "temperature": 0, "max_output_tokens": 10}

    missed = respond(gateway, acme, body)
    served_before = mock_upstream.app.requests_served
    hit = respond(gateway, acme, body)
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {acme.key}"},
    ) as streamed:
        text = streamed.read().decode()

    assert (missed.headers["x-llmops-cache"], hit.headers["x-llmops-cache"]) == ("miss", "hit-exact")
    assert streamed.headers["x-llmops-cache"] == "hit-exact"
    assert mock_upstream.app.requests_served == served_before
    assert hit.json()["output"][0]["content"] == missed.json()["output"][0]["content"]
    assert hit.json()["id"] != missed.json()["id"]
    assert ledger(hit).cost_usd == 0 and ledger(hit).saved_cache_usd == ledger(missed).cost_usd
    assert "event: response.completed" in text and ": x-llmops-cost-usd=0.0000000000" in text


def mock_model(setup, upstream_name: str):
    model = ModelFactory(name=upstream_name, provider=setup.small.provider, upstream_name=upstream_name)
    setup.tenant.model_access.allowed_models.add(model)
    return model


def test_a_refusal_is_the_response_s_refusal_part_plain_and_streamed(openai_client, acme):
    model = mock_model(acme, "mock-refuse")

    plain = openai_client.responses.create(model=model.name, input=QUESTION, max_output_tokens=6)
    events = list(openai_client.responses.create(model=model.name, input=QUESTION, max_output_tokens=6, stream=True))

    refused = plain.output[0].content[0]
    assert refused.type == "refusal" and refused.refusal.startswith("Mock answer to: What is")
    types = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.refusal.delta"]
    assert types == [
        *STREAM_EVENTS_BEFORE_TEXT,
        *["response.refusal.delta"] * len(deltas),
        "response.refusal.done",
        *STREAM_EVENTS_AFTER_TEXT[1:],
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[3].part.type == "refusal"
    assert "".join(delta.delta for delta in deltas) == events[-4].refusal == refused.refusal
    completed = events[-1].response
    assert [part.type for part in completed.output[0].content] == ["refusal"]
    assert completed.output[0].content[0].refusal == refused.refusal


def test_a_stream_that_breaks_off_ends_with_an_error_and_response_failed(openai_client, acme):
    model = mock_model(acme, "mock-break")

    events = list(openai_client.responses.create(model=model.name, input="a long answer", stream=True))

    assert [event.type for event in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "upstream_stream_truncated"
    failed = events[-1].response
    assert (failed.status, failed.error.code) == ("failed", "upstream_stream_truncated")
    assert failed.id == events[0].response.id
    assert [event.sequence_number for event in events] == list(range(len(events)))
    record = UsageRecord.objects.unscoped().get()
    assert (record.http_status, record.error_code, record.endpoint) == (
        502,
        "upstream_stream_truncated",
        "/v1/responses",
    )


def test_a_client_that_leaves_mid_stream_is_charged_what_was_generated(gateway, acme):
    model = mock_model(acme, "mock-slow-stream")

    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json={"model": model.name, "input": "a long answer", "stream": True},
        headers={"authorization": f"Bearer {acme.key}"},
    ) as response:
        lines = response.iter_lines()
        received = [next(lines)]
        while received[-1] != "event: response.output_text.delta":
            received.append(next(lines))
    assert received[0] == "event: response.created"

    record = wait_for_record()
    assert (record.http_status, record.error_code) == (499, "client_disconnected")
    assert 0 < record.completion_tokens < 24 and record.usage_estimated


def test_a_response_reports_the_tier_that_served_it_and_is_charged_at_it(openai_client, acme):
    acme.small.flex_price_multiplier = Decimal("0.5")
    acme.small.save(update_fields=["flex_price_multiplier"])

    flex = openai_client.responses.create(model=acme.small.name, input=QUESTION, service_tier="flex")
    auto = openai_client.responses.create(model=acme.small.name, input=QUESTION, service_tier="auto")
    streamed = list(
        openai_client.responses.create(model=acme.small.name, input=QUESTION, service_tier="auto", stream=True)
    )

    assert (flex.service_tier, auto.service_tier) == ("flex", "default")
    assert (streamed[0].response.service_tier, streamed[-1].response.service_tier) == ("auto", "default")
    flex_row, *default_rows = UsageRecord.objects.unscoped().order_by("created_at")
    assert flex_row.cost_usd == small_cost(flex_row.prompt_tokens, flex_row.completion_tokens) / 2
    assert flex_row.saved_batch_usd == flex_row.cost_usd
    for row in default_rows:
        assert row.cost_usd == small_cost(row.prompt_tokens, row.completion_tokens) > 0
