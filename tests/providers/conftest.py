from decimal import Decimal

import orjson
import pytest

from routing import upstream
from routing.catalog import ModelEntry, ModelPrices, ProviderEntry
from tests.loops import run
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.bedrock_server import BedrockServer
from tests.servers import serving

PRICES = ModelPrices(Decimal("3.00"), Decimal("0.30"), Decimal("15.00"), Decimal("3.75"))
# A transparent PNG of one pixel.
PNG_DATA_URL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# The chat parameters the Anthropic and Bedrock adapters do not translate, each at values that ask for something
# (refused, naming the parameter) and at the one that asks for nothing (taken, and not sent).
ASKING_FOR_SOMETHING = [
    ("response_format", {"type": "json_object"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}}),
    ("reasoning_effort", "high"),
    ("reasoning_effort", "minimal"),
    ("verbosity", "low"),
    ("n", 2),
    ("best_of", 3),
    ("logprobs", True),
    ("top_logprobs", 5),
    ("logit_bias", {"1734": -100}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", -0.5),
    ("seed", 42),
    ("service_tier", "flex"),
    ("service_tier", "scale"),
    ("functions", [WEATHER_TOOL["function"]]),
]
ASKING_FOR_NOTHING = {
    "response_format": {"type": "text"},
    "reasoning_effort": "none",
    "verbosity": "medium",
    "n": 1,
    "best_of": 1,
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
    "presence_penalty": 0,
    "frequency_penalty": 0.0,
    "seed": None,
    "service_tier": "default",
    "functions": [],
}

# Fields neither adapter translates, which an OpenAI-compatible upstream is sent as they are: Anthropic's own extended
# thinking, vLLM's and OpenRouter's samplers, a typo. Each used to be dropped.
UNTRANSLATED_FIELDS = [
    ("thinking", {"type": "enabled", "budget_tokens": 2000}),
    ("min_p", 0.1),
    ("top_a", 0.5),
    ("repetition_penalty", 1.2),
    ("temprature", 0.2),
]
# Chat fields that ask neither API for anything: taken, and not sent.
NO_OP_FIELDS = {
    "store": True,
    "metadata": {"purpose": "test"},
    "prompt_cache_key": "tenant-42",
    "safety_identifier": "user-hash",
    "prediction": {"type": "content", "content": "Hello"},
    "modalities": ["text"],
    "function_call": "auto",
    # A field no adapter reads, left out as null is.
    "thinking": None,
}
MESSAGES_WITH_LEGACY_FUNCTIONS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"role": "function", "name": "get_weather", "content": "18C and sunny"},
]
# A history holding legacy function calling, and the path of the part of it that is refused.
LEGACY_FUNCTION_HISTORIES = [
    pytest.param(MESSAGES_WITH_LEGACY_FUNCTIONS, "messages[1].function_call", id="function_call"),
    pytest.param(
        [
            MESSAGES_WITH_LEGACY_FUNCTIONS[0],
            {"role": "assistant", "content": "Checking."},
            MESSAGES_WITH_LEGACY_FUNCTIONS[2],
        ],
        "messages[2].role",
        id="function message",
    ),
]

# A user's file, inline or by an uploaded file's id: neither translation sends a document. Each used to be dropped, the
# model answering about a file it never saw.
FILE_PARTS = [
    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjQK", "filename": "report.pdf"}},
    {"type": "file", "file": {"file_id": "file-abc123"}},
]
# An earlier answer the model refused, as the chat form replays it: a refusal part, or the message's `refusal` beside
# an empty content. Each used to be dropped, the model seeing a turn it never answered.
REFUSED_ANSWERS = [
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
    {"role": "assistant", "content": "", "refusal": "I can't help with that."},
]


def with_file(part: dict) -> list[dict]:
    """A conversation whose second user message holds ``part`` after a question: messages[2].content[1]."""
    question = [{"type": "text", "text": "Summarise this."}, part]
    return [user("Hello"), {"role": "assistant", "content": "Hi."}, user(question)]


def asking_ids(cases: list[tuple[str, object]]) -> list[str]:
    return [f"{param}={orjson.dumps(value).decode()}" for param, value in cases]


def assert_refused_naming(refused, *, param: str, model: str, api: str) -> None:
    """A RequestRefused: a 400 unsupported_parameter naming ``param``, saying why the model's API cannot take it."""
    assert (refused.upstream_status, refused.param, refused.code) == (400, param, "unsupported_parameter")
    assert f"`{model}` is served through {api}, which cannot take" in refused.message


def assert_field_refused(refused, *, name: str, model: str, api: str) -> None:
    """``assert_refused_naming`` a field the adapter does not translate, its message naming it too."""
    assert_refused_naming(refused, param=name, model=model, api=api)
    assert f"which cannot take the field `{name}` (the gateway does not translate it)" in refused.message


def assert_part_refused(refused, *, param: str, kind: str, model: str, api: str) -> None:
    """``assert_refused_naming`` a content part the adapter does not translate, its message naming its type."""
    assert_refused_naming(refused, param=param, model=model, api=api)
    assert f"which cannot take a content part of type `{kind}` (the gateway does not translate it)" in refused.message


def user(content) -> dict:
    return {"role": "user", "content": content}


def provider_entry(kind: str, base_url: str, *, name: str = "", api_key: str = "", timeout: float = 5.0, region=""):
    return ProviderEntry(
        name=name or f"{kind}-test",
        kind=kind,
        base_url=base_url,
        api_key=api_key,
        timeout_seconds=timeout,
        region=region,
    )


def model_entry(name: str, provider: ProviderEntry, upstream_name: str | None = None) -> ModelEntry:
    return ModelEntry(
        name=name, upstream_name=upstream_name or name, provider=provider, prices=PRICES, context_window=200_000
    )


async def collect_stream(stream) -> list[str]:
    try:
        return [event async for event in stream.events()]
    finally:
        await stream.aclose()


def chunks_of(events: list[str]) -> list[dict]:
    assert events[-1] == "data: [DONE]"
    return [orjson.loads(event[6:]) for event in events[:-1]]


def streamed_text(chunks: list[dict]) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])


@pytest.fixture(scope="session")
def anthropic_server_session():
    yield from serving(AnthropicServer())


@pytest.fixture
def anthropic_server(anthropic_server_session):
    app = anthropic_server_session.app
    app.requests.clear()
    app.arrivals.clear()
    app.failures.clear()
    app.cached_prefixes.clear()
    return anthropic_server_session


@pytest.fixture
def anthropic_provider(anthropic_server):
    return provider_entry("anthropic", f"{anthropic_server.url}/v1", api_key=anthropic_server.app.api_key)


@pytest.fixture(scope="session")
def bedrock_server_session():
    yield from serving(BedrockServer())


@pytest.fixture
def aws_sandbox(monkeypatch, tmp_path):
    """Keep boto3 away from real AWS configuration, credentials and the instance metadata service."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bedrock_server(bedrock_server_session, aws_sandbox):
    bedrock_server_session.app.requests.clear()
    bedrock_server_session.app.authorizations.clear()
    bedrock_server_session.app.cached_prefixes.clear()
    return bedrock_server_session


@pytest.fixture
def bedrock_provider(bedrock_server):
    return provider_entry(
        "bedrock", bedrock_server.url, api_key="AKIDTESTONLY:test-secret-key", region="us-east-1", name="bedrock-test"
    )


def assert_no_usage_answered_or_streamed(provider: ProviderEntry, model: str) -> None:
    """An answer of ``model`` that reports no usage reaches the gateway with none, answered or streamed: no usage is
    not zero tokens, and the gateway counts such an answer itself (llmops.gateway.call.reply_usage, the stream
    relay's estimate) rather than charge nothing for it."""
    body = {"model": model, "messages": [user("one two three")]}

    reply = run(upstream.chat_completion(provider, body))

    assert reply.body["usage"] is None and reply.body["choices"][0]["message"]["content"] == "Echo: one two three"
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    chunks = chunks_of(run(collect_stream_of(provider, streamed)))
    assert streamed_text(chunks) == "Echo: one two three"
    assert not any("usage" in chunk for chunk in chunks)


async def collect_stream_of(provider: ProviderEntry, body: dict) -> list[str]:
    return await collect_stream(await upstream.open_chat_stream(provider, body))
