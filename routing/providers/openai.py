"""OpenAI-compatible upstreams: the request and the answer already have the shape the gateway speaks."""

import functools
import time
from collections.abc import AsyncIterator

import httpx
import orjson

from routing.catalog import ProviderEntry
from routing.max_tokens import requested_max_tokens
from routing.providers.base import (
    MalformedAnswer,
    UpstreamReply,
    answer_text,
    checked_chat_completion,
    checked_embeddings,
    elapsed_ms_since,
    invalid_response,
    json_post,
    named_stop_sequence,
    send_or_reject,
    served_tier,
    sse_events,
)
from routing.providers.prompt_cache import OFF
from routing.tokens import embedding_inputs

# OpenAI's own API (and its data-residency hosts, eu.api.openai.com and the like), where ``max_tokens`` is deprecated
# and its reasoning models (o-series, gpt-5) refuse it, while every chat model takes ``max_completion_tokens``. Other
# OpenAI-compatible servers get the field they were sent: some know only ``max_tokens`` and refuse a field they do not
# know.
OPENAI_API_HOST = "api.openai.com"


@functools.lru_cache(maxsize=256)
def _is_openai_itself(base_url: str) -> bool:
    host = httpx.URL(base_url).host
    return host == OPENAI_API_HOST or host.endswith(f".{OPENAI_API_HOST}")


def chat_body_for(provider: ProviderEntry, body: dict) -> dict:
    """The chat request as the provider takes it: for OpenAI's own API, a cap sent as ``max_tokens`` (by the client,
    or set by the gateway's caps and reservation) goes as ``max_completion_tokens``, which supersedes it."""
    if "max_tokens" not in body or not _is_openai_itself(provider.base_url):
        return body
    cap = requested_max_tokens(body)
    payload = {name: value for name, value in body.items() if name != "max_tokens"}
    if cap is not None:
        payload["max_completion_tokens"] = cap
    return payload


def _request(provider: ProviderEntry, body: dict, *, path: str = "/chat/completions") -> httpx.Request:
    headers = {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
    return json_post(provider, path, body, headers=headers)


def _parsed(provider: ProviderEntry, response: httpx.Response, started: float):
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        problem = MalformedAnswer("the body is not JSON")
        raise invalid_response(provider, problem, elapsed_ms=elapsed_ms_since(started)) from exc


async def chat_completion(provider: ProviderEntry, body: dict, *, provider_cache: str = OFF) -> UpstreamReply:
    """``provider_cache`` changes nothing: OpenAI caches long prompts by itself, without checkpoints."""
    started = time.perf_counter()
    response = await send_or_reject(
        provider, _request(provider, chat_body_for(provider, body)), stream=False, started=started
    )
    parsed = _parsed(provider, response, started)
    try:
        reply = checked_chat_completion(parsed)
    except MalformedAnswer as problem:
        raise invalid_response(
            provider,
            problem,
            elapsed_ms=elapsed_ms_since(started),
            completion_text=answer_text(parsed),
            service_tier=served_tier(parsed),
        ) from problem
    return UpstreamReply(
        body=reply,
        raw=response.content,
        elapsed_ms=elapsed_ms_since(started),
        stop_sequence=named_stop_sequence(reply["choices"][0]),
    )


class OpenAIStream:
    """An open streaming response. Iterate ``events()`` for its ``data: ...`` events; always ``aclose()``."""

    # vLLM names it on its finishing chunk, which the reader parses.
    stop_sequence = None

    def __init__(self, provider: ProviderEntry, response: httpx.Response, started: float):
        self.provider = provider
        self.response = response
        self.started = started

    async def events(self) -> AsyncIterator[str]:
        async for event in sse_events(self.provider, self.response, self.started):
            if event.data:
                yield "data: " + (self._one_line(event.data) if "\n" in event.data else event.data)

    def _one_line(self, data: str) -> str:
        """An event sent on several ``data:`` lines (SSE joins them with line feeds) as the one line the gateway passes
        on: the chunk serialised again, else the lines after the first would reach the client without their field."""
        try:
            return orjson.dumps(orjson.loads(data)).decode()
        except orjson.JSONDecodeError as exc:
            problem = MalformedAnswer("a stream event that is not JSON")
            raise invalid_response(self.provider, problem, elapsed_ms=self.elapsed_ms()) from exc

    def partial_usage(self) -> None:
        """An OpenAI-compatible stream reports usage in its last chunk only."""
        return None

    def elapsed_ms(self) -> int:
        return elapsed_ms_since(self.started)

    async def aclose(self) -> None:
        await self.response.aclose()


async def open_chat_stream(provider: ProviderEntry, body: dict, *, provider_cache: str = OFF) -> OpenAIStream:
    started = time.perf_counter()
    request = _request(provider, chat_body_for(provider, body))
    response = await send_or_reject(provider, request, stream=True, started=started)
    return OpenAIStream(provider, response, started)


async def embeddings(provider: ProviderEntry, body: dict) -> UpstreamReply:
    """OpenAI's embeddings API: the list of vectors, its shape checked, with the raw body to pass on as it came."""
    started = time.perf_counter()
    request = _request(provider, body, path="/embeddings")
    response = await send_or_reject(provider, request, stream=False, started=started)
    parsed = _parsed(provider, response, started)
    try:
        reply = checked_embeddings(parsed, inputs=len(embedding_inputs(body["input"])))
    except MalformedAnswer as problem:
        raise invalid_response(provider, problem, elapsed_ms=elapsed_ms_since(started)) from problem
    return UpstreamReply(body=reply, raw=response.content, elapsed_ms=elapsed_ms_since(started))
