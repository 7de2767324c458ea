"""Semantic hits and the near-miss guard, and streamed answers, through the live gateway."""

from datetime import timedelta

import httpx
import openai
import orjson
import pytest
from django.utils import timezone

from billing.models import UsageRecord
from routing.cache.store import cache_entry_build, cache_store, cache_writes_flush
from routing.models import CacheEntry, CacheEntryKind
from routing.services import tenant_model_access_set
from tests.cache.conftest import cache_policy, cache_request, chat, stored_answer
from tests.cache.embedders import BorrowedEmbedder
from tests.factories import ModelFactory, ProviderFactory
from tests.providers.asgi import end_stream, read_body, send_chunk, send_json, start_stream
from tests.servers import ThreadedServer

NO_STORE = {"x-llmops-cache": "no-store"}
NEAR_MISSES = [
    ("numbers", "How many days are there in 3 weeks?", "How many days are there in 5 weeks?"),
    ("identifier", "What is the shipping status of order #A10482?", "What is the shipping status of order #A10428?"),
    ("named entity", "What is the capital of France?", "What is the capital of Germany?"),
    ("negation", "How do I enable 2FA on my account?", "How do I disable 2FA on my account?"),
    ("language", "How do I reverse a string in Python?", "How do I reverse a string in JavaScript?"),
    ("unit direction", "Convert 30 degrees Celsius to Fahrenheit", "Convert 30 degrees Fahrenheit to Celsius"),
    (
        "format",
        "Summarize the benefits of exercise in 3 bullet points",
        "Summarize the benefits of exercise in 5 bullet points",
    ),
]


def test_a_paraphrase_is_a_semantic_hit(gateway, acme_caching, mock_upstream):
    first = chat(gateway, acme_caching, "What is the capital of France?")
    served_before = mock_upstream.app.requests_served
    second = chat(gateway, acme_caching, "what's France's capital city")

    assert first.headers["x-llmops-cache"] == "miss"
    assert second.headers["x-llmops-cache"] == "hit-semantic"
    assert 0.8 <= float(second.headers["x-llmops-cache-similarity"]) < 1
    assert mock_upstream.app.requests_served == served_before
    assert second.json()["choices"] == first.json()["choices"]
    row = UsageRecord.objects.unscoped().get(request_id=second.headers["x-llmops-request-id"])
    assert (row.cost_usd, row.cache_status) == (0, "hit-semantic")
    assert row.saved_cache_usd > 0
    cache_writes_flush()
    assert CacheEntry.objects.unscoped().get().kind == CacheEntryKind.SEMANTIC


def test_a_rule_with_the_semantic_cache_off_answers_from_exact_hits_only(gateway, acme, embedder, mock_upstream):
    cache_policy(acme, semantic=False)
    chat(gateway, acme, "What is the capital of France?")
    served_before = mock_upstream.app.requests_served

    paraphrase = chat(gateway, acme, "what's France's capital city")
    again = chat(gateway, acme, "What is the capital of France?")

    assert paraphrase.headers["x-llmops-cache"] == "miss"
    assert mock_upstream.app.requests_served == served_before + 1
    assert again.headers["x-llmops-cache"] == "hit-exact"
    cache_writes_flush()
    assert {entry.kind for entry in CacheEntry.objects.unscoped()} == {CacheEntryKind.EXACT}


def test_an_entry_another_process_stored_is_found_by_meaning_at_once(gateway, acme_caching, embedder, settings):
    """On Postgres the search is a query: no per-process index to refresh (on SQLite one would wait for it)."""
    settings.LLMOPS_CACHE_INDEX_REFRESH_SECONDS = 3600
    assert chat(gateway, acme_caching, "How do I reset my password?").headers["x-llmops-cache"] == "miss"
    cache = cache_request(acme_caching, "What is the capital of France?")
    # Written straight to Postgres, as another gateway process would.
    cache_entry_build(
        cache,
        answer=stored_answer("Paris."),
        vector=embedder.embed([cache.semantic.prompt])[0],
        expires_at=timezone.now() + timedelta(minutes=10),
    ).save()

    found = chat(gateway, acme_caching, "what's France's capital city", headers=NO_STORE)
    assert found.headers["x-llmops-cache"] == "hit-semantic"
    assert found.json()["choices"][0]["message"]["content"] == "Paris."


def test_entries_of_another_embedder_of_the_same_size_are_not_matched_by_meaning(
    gateway, acme_caching, embedder, settings, monkeypatch
):
    """Vectors were told apart by their size alone: after a change to another embedder of the same dimension, its
    vectors were compared with the old one's."""
    assert chat(gateway, acme_caching, "What is the capital of France?").headers["x-llmops-cache"] == "miss"
    cache_writes_flush()
    monkeypatch.setattr(BorrowedEmbedder, "lender", embedder)
    settings.LLMOPS_CACHE_EMBEDDER = "tests.cache.embedders.BorrowedEmbedder"

    paraphrase = chat(gateway, acme_caching, "what's France's capital city", headers=NO_STORE)
    repeat = chat(gateway, acme_caching, "What is the capital of France?")
    chat(gateway, acme_caching, "How do I reset my password?")
    own = chat(gateway, acme_caching, "How can I reset my password", headers=NO_STORE)

    assert paraphrase.headers["x-llmops-cache"] == "miss"
    # An exact repeat compares no vectors, and the new embedder's own entries are found by meaning.
    assert (repeat.headers["x-llmops-cache"], own.headers["x-llmops-cache"]) == ("hit-exact", "hit-semantic")


@pytest.mark.parametrize(("kind", "stored", "asked"), NEAR_MISSES, ids=[kind for kind, *_ in NEAR_MISSES])
def test_a_near_miss_is_refused(gateway, acme_caching, kind, stored, asked):
    chat(gateway, acme_caching, stored)
    response = chat(gateway, acme_caching, asked)
    assert response.headers["x-llmops-cache"] == "miss"
    assert "x-llmops-cache-similarity" not in response.headers


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("What is 10!", "What is 10?"),
        ("How many capital letters are in 'NASA'?", "How many capital letters are in 'nasa'?"),
    ],
    ids=["edge-punctuation", "case"],
)
def test_a_prompt_that_differs_only_in_case_or_punctuation_is_not_served_the_others_answer(
    gateway, acme_caching, stored, asked
):
    chat(gateway, acme_caching, stored)

    assert chat(gateway, acme_caching, asked).headers["x-llmops-cache"] == "miss"
    assert chat(gateway, acme_caching, stored).headers["x-llmops-cache"] == "hit-exact"


def test_the_same_question_from_a_user_of_another_name_misses(gateway, acme_caching):
    def ask(name):
        messages = [
            {"role": "system", "content": "Greet the user by name."},
            {"role": "user", "name": name, "content": "What is my name?"},
        ]
        return httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": acme_caching.small.name, "messages": messages, "temperature": 0},
            headers={"authorization": f"Bearer {acme_caching.key}"},
        )

    assert ask("alice").headers["x-llmops-cache"] == "miss"
    assert ask("bob").headers["x-llmops-cache"] == "miss"
    assert ask("alice").headers["x-llmops-cache"] == "hit-exact"


def test_the_same_question_in_another_conversation_misses(gateway, acme_caching):
    chat(gateway, acme_caching, "And what about the second one?", system="You answer questions about invoices.")
    other = chat(gateway, acme_caching, "And what about the second one?", system="You answer questions about cars.")
    assert other.headers["x-llmops-cache"] == "miss"


def _stream(openai_client, model, content, **options):
    return list(
        openai_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], temperature=0, stream=True, **options
        )
    )


def test_a_streamed_answer_is_cached_and_replayed_as_a_stream(gateway, acme_caching, openai_client, mock_upstream):
    question = "Describe the onboarding checklist"
    first = _stream(openai_client, acme_caching.small.name, question)
    served_before = mock_upstream.app.requests_served
    raw = openai_client.chat.completions.with_raw_response.create(
        model=acme_caching.small.name,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    replay = list(raw.parse())

    assert raw.headers["x-llmops-cache"] == "hit-exact"
    assert mock_upstream.app.requests_served == served_before
    text = "".join(chunk.choices[0].delta.content or "" for chunk in first if chunk.choices)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in replay if chunk.choices) == text
    assert replay[-1].usage is not None and replay[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in replay if c.choices][-1] == "stop"
    # The stored stream also answers a non-streaming request.
    plain = chat(gateway, acme_caching, question)
    assert plain.headers["x-llmops-cache"] == "hit-exact"
    assert plain.json()["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("first_streamed", [True, False])
def test_a_refusal_is_cached_as_a_refusal_and_replayed_as_one(
    gateway, acme_caching, openai_client, mock_upstream, first_streamed
):
    """A model's refusal (``refusal``, content null) is the answer: a streamed one used to be stored as an empty
    content, and a stored one replayed as a stream lost it."""
    refuser = ModelFactory(name="acme-refuser", provider=acme_caching.small.provider, upstream_name="mock-refuse")
    tenant_model_access_set(
        tenant=acme_caching.tenant, allowed_models=[acme_caching.small, refuser], default_model=acme_caching.small
    )
    question = "Write the exploit for this CVE"
    if first_streamed:
        first = _stream(openai_client, refuser.name, question)
        refusal = "".join(chunk.choices[0].delta.refusal or "" for chunk in first if chunk.choices)
    else:
        refusal = chat(gateway, acme_caching, question, model=refuser.name).json()["choices"][0]["message"]["refusal"]
    assert refusal.startswith("Mock answer to: Write the exploit")
    cache_writes_flush()
    served_before = mock_upstream.app.requests_served

    plain = chat(gateway, acme_caching, question, model=refuser.name)
    replay = _stream(openai_client, refuser.name, question)

    assert plain.headers["x-llmops-cache"] == "hit-exact"
    assert mock_upstream.app.requests_served == served_before
    message = plain.json()["choices"][0]["message"]
    assert (message["content"], message["refusal"]) == (None, refusal)
    assert "".join(chunk.choices[0].delta.refusal or "" for chunk in replay if chunk.choices) == refusal
    assert not "".join(chunk.choices[0].delta.content or "" for chunk in replay if chunk.choices)


WEATHER_FUNCTION = {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class LegacyFunctionUpstream:
    """An OpenAI-compatible upstream of the legacy function calling: it answers a chat request with its reasoning and
    a call of the first of its `functions`."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = orjson.loads(await read_body(receive))
        message = {
            "role": "assistant",
            "content": None,
            "reasoning_content": "The user asks for the weather in Paris.",
            "function_call": {"name": body["functions"][0]["name"], "arguments": '{"city": "Paris"}'},
        }
        usage = {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}
        await send_json(
            send,
            200,
            {
                "id": "chatcmpl-legacy",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "function_call"}],
                "usage": usage,
            },
        )


@pytest.fixture
def legacy_function_model(acme_caching):
    with ThreadedServer(LegacyFunctionUpstream()) as server:
        provider = ProviderFactory(name="legacy-functions", base_url=f"{server.url}/v1")
        model = ModelFactory(name="acme-legacy", provider=provider, upstream_name="legacy")
        tenant_model_access_set(
            tenant=acme_caching.tenant, allowed_models=[acme_caching.small, model], default_model=acme_caching.small
        )
        yield model


def test_a_legacy_function_call_and_its_reasoning_are_replayed_to_a_stream(
    gateway, acme_caching, openai_client, legacy_function_model
):
    """A stored answer replayed as a stream lost its `function_call` (and reasoning): the client got none."""
    ask = {
        "model": legacy_function_model.name,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "temperature": 0,
        "functions": [WEATHER_FUNCTION],
        "function_call": {"name": "get_weather"},
    }
    stored = openai_client.chat.completions.create(**ask).choices[0].message
    cache_writes_flush()

    raw = openai_client.chat.completions.with_raw_response.create(**ask, stream=True)
    choices = [chunk.choices[0] for chunk in raw.parse() if chunk.choices]
    deltas = [choice.delta for choice in choices]

    assert raw.headers["x-llmops-cache"] == "hit-exact"
    assert [delta.function_call.model_dump() for delta in deltas if delta.function_call] == [
        stored.function_call.model_dump()
    ]
    reasoning = "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)
    assert reasoning == stored.reasoning_content == "The user asks for the weather in Paris."
    assert choices[-1].finish_reason == "function_call"


THOUGHT = "91 = 7 x 13, so it has divisors other than 1 and itself."


class ReasoningStreamUpstream:
    """An OpenAI-compatible reasoning model that streams its reasoning before its answer, in pieces, under
    `fields`: DeepSeek's `reasoning_content`, OpenRouter's `reasoning`, or both (as vLLM has sent it)."""

    def __init__(self, fields: tuple[str, ...]):
        self.fields = fields

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = orjson.loads(await read_body(receive))
        base = {"id": "chatcmpl-thinking", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        pieces = [THOUGHT[start : start + 10] for start in range(0, len(THOUGHT), 10)]
        deltas = [
            {"role": "assistant", "content": ""},
            *({field: piece for field in self.fields} for piece in pieces),
            {"content": "No."},
        ]
        chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks.append(
            {**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40}}
        )
        await start_stream(send, b"text/event-stream")
        for chunk in chunks:
            await send_chunk(send, b"data: " + orjson.dumps(chunk) + b"\n\n")
        await send_chunk(send, b"data: [DONE]\n\n")
        await end_stream(send)


@pytest.mark.parametrize(
    "fields",
    [("reasoning_content",), ("reasoning",), ("reasoning_content", "reasoning")],
    ids=["deepseek", "openrouter", "vllm"],
)
def test_a_streamed_answers_reasoning_is_cached_with_it(gateway, acme_caching, openai_client, fields):
    """A stream was stored with its content only: a hit gave the answer without the reasoning the live stream sent."""
    with ThreadedServer(ReasoningStreamUpstream(fields)) as server:
        provider = ProviderFactory(name="reasoner", base_url=f"{server.url}/v1")
        model = ModelFactory(name="acme-reasoner", provider=provider, upstream_name="reasoner")
        tenant_model_access_set(
            tenant=acme_caching.tenant, allowed_models=[acme_caching.small, model], default_model=acme_caching.small
        )
        question = "Is 91 prime?"
        live = [chunk.choices[0].delta for chunk in _stream(openai_client, model.name, question) if chunk.choices]
        cache_writes_flush()

    plain = chat(gateway, acme_caching, question, model=model.name)
    replay = [chunk.choices[0].delta for chunk in _stream(openai_client, model.name, question) if chunk.choices]

    assert plain.headers["x-llmops-cache"] == "hit-exact"
    message = plain.json()["choices"][0]["message"]
    assert message["content"] == "No."
    for field in fields:
        assert "".join(getattr(delta, field, None) or "" for delta in live) == THOUGHT
        assert message[field] == THOUGHT
        assert "".join(getattr(delta, field, None) or "" for delta in replay) == THOUGHT
    assert message.keys() & {"reasoning_content", "reasoning"} == set(fields)


def test_an_answer_stored_without_usage_replays_the_gateways_count_to_a_stream_that_asks(
    gateway, acme_caching, openai_client
):
    no_usage = ModelFactory(name="acme-no-usage", provider=acme_caching.small.provider, upstream_name="mock-no-usage")
    tenant_model_access_set(
        tenant=acme_caching.tenant, allowed_models=[acme_caching.small, no_usage], default_model=acme_caching.small
    )
    question = "List the steps to close a support ticket"
    first = chat(gateway, acme_caching, question, model=no_usage.name)
    cache_writes_flush()

    raw = openai_client.chat.completions.with_raw_response.create(
        model=no_usage.name,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    replay = list(raw.parse())

    charged = UsageRecord.objects.unscoped().get(request_id=first.headers["x-llmops-request-id"])
    assert "usage" not in first.json() and charged.usage_estimated
    assert raw.headers["x-llmops-cache"] == "hit-exact"
    assert replay[-1].choices == []
    assert (replay[-1].usage.prompt_tokens, replay[-1].usage.completion_tokens) == (
        charged.prompt_tokens,
        charged.completion_tokens,
    )


def test_a_truncated_stream_is_not_cached(gateway, acme_caching, openai_client):
    breaking = ModelFactory(name="acme-breaking", provider=acme_caching.small.provider, upstream_name="mock-break")
    tenant_model_access_set(
        tenant=acme_caching.tenant, allowed_models=[acme_caching.small, breaking], default_model=acme_caching.small
    )
    with pytest.raises(openai.APIError, match="ended the stream"):
        _stream(openai_client, breaking.name, "Tell me a long story about caching")
    cache_writes_flush()
    assert not CacheEntry.objects.unscoped().exists()


def test_an_answer_stored_in_parts_is_replayed_as_text(gateway, acme_caching):
    """A stream's deltas carry text: content stored as a list of parts is replayed as the text of its parts."""
    question = "Describe the onboarding checklist"
    parts = [{"type": "text", "text": "Sign the contract."}, {"type": "text", "text": " Then meet the team."}]
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": parts}, "finish_reason": "stop"}]}
    cache_store(cache_request(acme_caching, question), answer=answer)
    cache_writes_flush()

    body = {"model": acme_caching.small.name, "messages": [{"role": "user", "content": question}], "temperature": 0}
    replay = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {acme_caching.key}"},
    )

    assert replay.headers["x-llmops-cache"] == "hit-exact"
    chunks = [
        orjson.loads(line.removeprefix("data: "))
        for line in replay.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    contents = [chunk["choices"][0]["delta"].get("content") for chunk in chunks if chunk["choices"]]
    assert all(content is None or isinstance(content, str) for content in contents)
    assert "".join(content or "" for content in contents) == "Sign the contract. Then meet the team."
