"""Calls to upstream providers, in OpenAI's chat completion format whatever the provider speaks (and OpenAI's
embeddings format, for the providers that have embeddings).

``chat_completion``, ``open_chat_stream`` and ``embeddings`` pick the adapter in ``routing.providers`` by the
provider's kind (``routing.providers.kinds``); the error classes, reply and stream shapes are shared by all adapters.
A reply has been checked (``checked_chat_completion``: readable choices, usage as bounded counts of tokens;
``checked_embeddings``: one vector per input); a stream's events are checked by whoever reads them
(``checked_chunk``), where they are parsed once.
"""

from importlib import import_module

from routing.catalog import ProviderEntry
from routing.providers.base import (
    MalformedAnswer,
    RequestRefused,
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
    served_tier,
)
from routing.providers.kinds import PROVIDER_KINDS, provider_kind
from routing.providers.prompt_cache import OFF, CacheControlRefused

__all__ = [
    "MalformedAnswer",
    "RequestRefused",
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
    "embeddings",
    "has_embeddings",
    "invalid_response",
    "named_stop_sequence",
    "open_chat_stream",
    "served_tier",
]

# Imported when the gateway starts, not on a provider's first request (boto3 alone takes a while).
ADAPTERS = {spec.value: import_module(spec.adapter) for spec in PROVIDER_KINDS}


def _adapter(provider: ProviderEntry):
    try:
        return ADAPTERS[provider.kind]
    except KeyError:
        raise UpstreamError(f"provider {provider.name} has the unknown kind {provider.kind!r}") from None


def _refused(refusal: CacheControlRefused) -> RequestRefused:
    return RequestRefused(str(refusal), param=refusal.param, code=refusal.code)


async def chat_completion(provider: ProviderEntry, body: dict, *, provider_cache: str = OFF) -> UpstreamReply:
    """The answer as an OpenAI chat.completion body; raises an UpstreamError subclass when there is none, a
    RequestRefused for a client's ``cache_control`` the provider would refuse or bill beyond the catalog's prices.

    ``provider_cache`` is the routing rule's as it applies to the model (prompt_cache.effective_provider_cache):
    ``auto`` lets the adapter of a provider with a prompt cache mark the request's stable prefix for it.
    """
    try:
        return await _adapter(provider).chat_completion(provider, body, provider_cache=provider_cache)
    except CacheControlRefused as refusal:
        raise _refused(refusal) from refusal


async def open_chat_stream(provider: ProviderEntry, body: dict, *, provider_cache: str = OFF) -> UpstreamStream:
    """An open stream of OpenAI ``data: {chunk}`` events ending in ``data: [DONE]``; always ``aclose()`` it."""
    try:
        return await _adapter(provider).open_chat_stream(provider, body, provider_cache=provider_cache)
    except CacheControlRefused as refusal:
        raise _refused(refusal) from refusal


def has_embeddings(provider: ProviderEntry) -> bool:
    """Whether the provider's API has embeddings (OpenAI's shape); Anthropic's and Bedrock Converse have none."""
    spec = provider_kind(provider.kind)
    return spec is not None and spec.embeddings


async def embeddings(provider: ProviderEntry, body: dict) -> UpstreamReply:
    """The answer as an OpenAI embeddings list; raises an UpstreamError subclass when there is none."""
    if not has_embeddings(provider):
        raise UpstreamError(f"provider {provider.name} has no embeddings API")
    return await _adapter(provider).embeddings(provider, body)
