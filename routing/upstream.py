"""Calls to upstream providers, in OpenAI's chat completion format whatever the provider speaks.

``chat_completion`` and ``open_chat_stream`` pick the adapter in ``routing.providers`` by the provider's kind
(``routing.providers.kinds``); the error classes, reply and stream shapes are shared by all adapters. A reply has been
checked (``checked_chat_completion``: readable choices, usage as bounded counts of tokens); a stream's events are
checked by whoever reads them (``checked_chunk``), where they are parsed once.
"""

from importlib import import_module

from routing.catalog import ProviderEntry
from routing.providers.base import (
    MalformedAnswer,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamRejected,
    UpstreamReply,
    UpstreamStream,
    UpstreamStreamTruncated,
    UpstreamTimeout,
    answer_text,
    checked_chunk,
    invalid_response,
    named_stop_sequence,
)
from routing.providers.kinds import PROVIDER_KINDS

__all__ = [
    "MalformedAnswer",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamInvalidResponse",
    "UpstreamRejected",
    "UpstreamReply",
    "UpstreamStream",
    "UpstreamStreamTruncated",
    "UpstreamTimeout",
    "answer_text",
    "chat_completion",
    "checked_chunk",
    "invalid_response",
    "named_stop_sequence",
    "open_chat_stream",
]

# Imported when the gateway starts, not on a provider's first request (boto3 alone takes a while).
ADAPTERS = {spec.value: import_module(spec.adapter) for spec in PROVIDER_KINDS}


def _adapter(provider: ProviderEntry):
    try:
        return ADAPTERS[provider.kind]
    except KeyError:
        raise UpstreamError(f"provider {provider.name} has the unknown kind {provider.kind!r}") from None


async def chat_completion(provider: ProviderEntry, body: dict) -> UpstreamReply:
    """The answer as an OpenAI chat.completion body; raises an UpstreamError subclass when there is none."""
    return await _adapter(provider).chat_completion(provider, body)


async def open_chat_stream(provider: ProviderEntry, body: dict) -> UpstreamStream:
    """An open stream of OpenAI ``data: {chunk}`` events ending in ``data: [DONE]``; always ``aclose()`` it."""
    return await _adapter(provider).open_chat_stream(provider, body)
