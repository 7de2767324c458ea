"""Parameters that Anthropic's Messages API and Bedrock's Converse cannot take, through the live gateway: a 400
naming the parameter (on /v1/responses, the Responses one), nothing sent, nothing charged; never a 200 without what
was asked."""

from decimal import Decimal

import httpx
import pytest

from billing.models import UsageRecord
from tests.factories import ModelFactory
from tests.gateway.test_failed_attempts_live import chain

JSON_SCHEMA = {
    "name": "answer",
    "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


@pytest.fixture
def anthropic_claude(acme, anthropic_provider):
    model = ModelFactory(name="claude-sonnet", provider=anthropic_provider, upstream_name="claude-sonnet-4-20250514")
    acme.tenant.model_access.allowed_models.add(model)
    return model


@pytest.fixture
def bedrock_claude(acme, bedrock_provider):
    model = ModelFactory(
        name="bedrock-sonnet", provider=bedrock_provider, upstream_name="anthropic.claude-3-7-sonnet-20250219-v1:0"
    )
    acme.tenant.model_access.allowed_models.add(model)
    return model


def post(gateway, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)


def assert_refused_and_charged_nothing(response: httpx.Response, param: str, *upstreams) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "unsupported_parameter", param)
    assert all(server.app.requests == [] for server in upstreams)
    record = UsageRecord.objects.unscoped().get()
    assert (record.http_status, record.error_code, record.cost_usd) == (400, "unsupported_parameter", Decimal(0))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_a_json_schema_asked_of_claude_on_anthropic_or_bedrock_is_a_400_charged_nothing(
    gateway, acme, request, anthropic_upstream, bedrock_upstream, provider, stream
):
    model = request.getfixturevalue(f"{provider}_claude")
    body = {
        "model": model.name,
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "max_tokens": 20,
        "response_format": {"type": "json_schema", "json_schema": JSON_SCHEMA},
        "stream": stream,
    }

    response = post(gateway, acme.key, "/v1/chat/completions", body)

    assert_refused_and_charged_nothing(response, "response_format", anthropic_upstream, bedrock_upstream)
    assert "which cannot take a response format other than text" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("asked", "param"),
    [
        ({"text": {"format": {"type": "json_schema", **JSON_SCHEMA}}}, "text.format"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
    ],
    ids=["json_schema", "json_object", "verbosity", "effort"],
)
def test_a_responses_request_asking_anthropic_for_what_it_cannot_take_names_the_responses_parameter(
    gateway, acme, anthropic_claude, anthropic_upstream, asked, param
):
    """Such a request used to answer 200 in free text, its Response echoing the format and effort as applied."""
    body = {"model": anthropic_claude.name, "input": "Capital of France?", "max_output_tokens": 20, **asked}

    response = post(gateway, acme.key, "/v1/responses", body)

    assert_refused_and_charged_nothing(response, param, anthropic_upstream)


def test_a_responses_request_asking_anthropic_for_the_defaults_is_answered(gateway, acme, anthropic_claude):
    body = {
        "model": anthropic_claude.name,
        "input": "Capital of France?",
        "max_output_tokens": 20,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "reasoning": {"effort": "none"},
    }

    response = post(gateway, acme.key, "/v1/responses", body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert answer["output"][0]["content"][0]["text"]


def json_schema_chat(gateway, setup) -> httpx.Response:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "max_tokens": 20,
        "response_format": {"type": "json_schema", "json_schema": JSON_SCHEMA},
    }
    return post(gateway, setup.key, "/v1/chat/completions", body)


def test_a_fallback_that_takes_the_parameter_answers_when_the_first_model_cannot(
    gateway, acme, anthropic_claude, anthropic_upstream
):
    chain(acme, anthropic_claude, acme.small)

    response = json_schema_chat(gateway, acme)

    assert response.status_code == 200, response.text
    assert anthropic_upstream.app.requests == []
    record = UsageRecord.objects.unscoped().get()
    assert (record.served_model, record.http_status) == (acme.small.name, 200) and record.cost_usd > 0


def test_a_fallback_that_cannot_take_the_parameter_leaves_the_first_models_failure_as_the_answer(
    gateway, acme, anthropic_claude, anthropic_upstream, mock_upstream
):
    failing = ModelFactory(
        name="acme-malformed", provider=acme.small.provider, upstream_name="mock-malformed-body-array"
    )
    acme.tenant.model_access.allowed_models.add(failing)
    chain(acme, failing, anthropic_claude)

    response = json_schema_chat(gateway, acme)

    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] != "unsupported_parameter"
    assert anthropic_upstream.app.requests == []


THINKING = {"type": "enabled", "budget_tokens": 2000}


def thinking_chat(gateway, setup, model: str, *, stream: bool = False) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "max_tokens": 20,
        "thinking": THINKING,
        "stream": stream,
    }
    return post(gateway, setup.key, "/v1/chat/completions", body)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_a_field_the_translation_does_not_know_asked_of_claude_is_a_400_naming_it_charged_nothing(
    gateway, acme, request, anthropic_upstream, bedrock_upstream, provider, stream
):
    """Anthropic's own `thinking` on the chat form used to be dropped: a 200 answer without the extended thinking (and
    its budget) asked for, where an OpenAI-compatible upstream is sent it."""
    model = request.getfixturevalue(f"{provider}_claude")

    response = thinking_chat(gateway, acme, model.name, stream=stream)

    assert_refused_and_charged_nothing(response, "thinking", anthropic_upstream, bedrock_upstream)
    assert "which cannot take the field `thinking`" in response.json()["error"]["message"]


def test_a_fallback_that_takes_the_field_answers_when_claude_cannot(
    gateway, acme, anthropic_claude, anthropic_upstream
):
    chain(acme, anthropic_claude, acme.small)

    response = thinking_chat(gateway, acme, "auto")

    assert response.status_code == 200, response.text
    assert anthropic_upstream.app.requests == []
    record = UsageRecord.objects.unscoped().get()
    assert (record.served_model, record.http_status) == (acme.small.name, 200) and record.cost_usd > 0


def test_legacy_function_calling_in_the_history_sent_to_claude_is_a_400_naming_the_message(
    gateway, acme, anthropic_claude, anthropic_upstream
):
    """The assistant's function_call and the function message used to be dropped, or sent with a role Anthropic
    refuses: the model saw the question without the call or its result."""
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "18C and sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    body = {"model": anthropic_claude.name, "messages": messages, "max_tokens": 20}

    response = post(gateway, acme.key, "/v1/chat/completions", body)

    assert_refused_and_charged_nothing(response, "messages[1].function_call", anthropic_upstream)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_a_file_sent_to_claude_is_a_400_naming_its_part_charged_nothing(
    gateway, acme, request, anthropic_upstream, bedrock_upstream, provider, stream
):
    """A file part used to be dropped: a 200 answer about a PDF the model never saw, billed in full."""
    model = request.getfixturevalue(f"{provider}_claude")
    pdf = {"file_data": "data:application/pdf;base64,JVBERi0xLjQK", "filename": "report.pdf"}
    content = [{"type": "text", "text": "Summarise this report."}, {"type": "file", "file": pdf}]
    body = {"model": model.name, "messages": [{"role": "user", "content": content}], "max_tokens": 20, "stream": stream}

    response = post(gateway, acme.key, "/v1/chat/completions", body)

    assert_refused_and_charged_nothing(response, "messages[0].content[1].type", anthropic_upstream, bedrock_upstream)
    assert "which cannot take a content part of type `file`" in response.json()["error"]["message"]
