"""OpenAI-compatible upstreams: the request and the answer already have the shape the gateway speaks."""

import time
from collections.abc import AsyncIterator

import httpx
import orjson

from routing.catalog import ProviderEntry
from routing.providers.base import (
    MalformedAnswer,
    UpstreamReply,
    answer_text,
    checked_chat_completion,
    elapsed_ms_since,
    invalid_response,
    json_post,
    named_stop_sequence,
    send_or_reject,
    sse_events,
)


def _request(provider: ProviderEntry, body: dict) -> httpx.Request:
    headers = {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
    return json_post(provider, "/chat/completions", body, headers=headers)


async def chat_completion(provider: ProviderEntry, body: dict) -> UpstreamReply:
    started = time.perf_counter()
    response = await send_or_reject(provider, _request(provider, body), stream=False, started=started)
    try:
        parsed = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        problem = MalformedAnswer("the body is not JSON")
        raise invalid_response(provider, problem, elapsed_ms=elapsed_ms_since(started)) from exc
    try:
        reply = checked_chat_completion(parsed)
    except MalformedAnswer as problem:
        text = answer_text(parsed)
        raise invalid_response(
            provider, problem, elapsed_ms=elapsed_ms_since(started), completion_text=text
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
                yield "data: " + event.data

    def elapsed_ms(self) -> int:
        return elapsed_ms_since(self.started)

    async def aclose(self) -> None:
        await self.response.aclose()


async def open_chat_stream(provider: ProviderEntry, body: dict) -> OpenAIStream:
    started = time.perf_counter()
    response = await send_or_reject(provider, _request(provider, body), stream=True, started=started)
    return OpenAIStream(provider, response, started)
