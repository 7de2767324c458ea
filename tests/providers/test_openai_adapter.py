"""The OpenAI-compatible adapter's request body: OpenAI's own API is sent ``max_completion_tokens`` for a cap sent as
``max_tokens``, which its reasoning models refuse; any other OpenAI-compatible server gets the body as it came. OpenAI
is reached through an egress proxy on loopback (``HTTP_PROXY``), which sees the request as OpenAI would."""

import orjson
import pytest

from routing.providers import openai
from tests.loops import run
from tests.providers.conftest import provider_entry
from tests.providers.test_transport import RawServer, json_answer

MESSAGES = [{"role": "user", "content": "hi"}]


def sent_body(request: bytes) -> dict:
    return orjson.loads(request.split(b"\r\n\r\n", 1)[1])


def call_through_proxy(monkeypatch, base_url: str, body: dict, *, stream: bool) -> tuple[bytes, dict]:
    """The request line and the body a provider at ``base_url`` is sent, as the proxy received them."""
    proxy = RawServer(json_answer)

    async def scenario():
        async with proxy as proxy_url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            provider = provider_entry("openai", base_url)
            if stream:
                opened = await openai.open_chat_stream(provider, body)
                await opened.aclose()
            else:
                await openai.chat_completion(provider, body)

    run(scenario())
    request = proxy.requests[0]
    return request.split(b"\r\n", 1)[0], sent_body(request)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_itself_is_sent_max_completion_tokens_for_a_max_tokens_cap(monkeypatch, stream):
    line, body = call_through_proxy(
        monkeypatch,
        "http://api.openai.com/v1",
        {"model": "o3-mini", "messages": MESSAGES, "max_tokens": 50},
        stream=stream,
    )

    assert line == b"POST http://api.openai.com/v1/chat/completions HTTP/1.1"
    assert body == {"model": "o3-mini", "messages": MESSAGES, "max_completion_tokens": 50}


@pytest.mark.parametrize("base_url", ["https://eu.api.openai.com/v1", "https://us.api.openai.com/v1"])
def test_openai_s_data_residency_hosts_are_openai_itself(base_url):
    body = {"model": "o3", "messages": MESSAGES, "max_tokens": 50}

    assert openai.chat_body_for(provider_entry("openai", base_url), body) == {
        "model": "o3",
        "messages": MESSAGES,
        "max_completion_tokens": 50,
    }


def test_a_host_that_only_ends_like_openai_s_is_not_openai_itself():
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 50}

    assert openai.chat_body_for(provider_entry("openai", "https://notapi.openai.com.example/v1"), body) == body
    assert openai.chat_body_for(provider_entry("openai", "https://evilapi.openai.com/v1"), body) == body


def test_openai_itself_is_sent_the_cap_that_supersedes_when_both_fields_come():
    provider = provider_entry("openai", "https://api.openai.com/v1")
    body = {"model": "gpt-5-mini", "messages": MESSAGES, "max_tokens": 50, "max_completion_tokens": 20}

    assert openai.chat_body_for(provider, body) == {
        "model": "gpt-5-mini",
        "messages": MESSAGES,
        "max_completion_tokens": 20,
    }


def test_a_null_max_tokens_is_left_out_for_openai_itself():
    provider = provider_entry("openai", "https://api.openai.com/v1")

    assert openai.chat_body_for(provider, {"model": "m", "messages": MESSAGES, "max_tokens": None}) == {
        "model": "m",
        "messages": MESSAGES,
    }


def test_another_openai_compatible_server_gets_max_tokens_as_it_came(monkeypatch):
    body = {"model": "llama", "messages": MESSAGES, "max_tokens": 50}

    _, sent = call_through_proxy(monkeypatch, "http://vllm.internal:8000/v1", body, stream=False)

    assert sent == body
