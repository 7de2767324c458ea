"""What a request's cache key is made of, and whether the request may use the cache at all.

Keys and fingerprints are keyed hashes (core/crypto.py): the rows they sit in never let anyone confirm a guessed
prompt by hashing it. Apart from that server key and the configured embedder's name in a semantic key, these are pure
functions.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from core.crypto import keyed_hash
from core.redaction import redact
from routing.cache.embedders import embedder_identity

if TYPE_CHECKING:
    from routing.catalog import ModelEntry

CACHE_HEADER = "x-llmops-cache"
# Fields that change how an answer is delivered or attributed, never what it says.
DELIVERY_FIELDS = frozenset({"model", "stream", "stream_options", "user", "metadata", "store", "service_tier"})
_SPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = " \t\n.?!,;:\"'`"
# A longer last user turn is cached for exact repeats only. This bounds the redaction check in semantic_key (about
# 0.3 to 0.8 µs a character, on the event loop) to about 2 ms; the default embedder reads only a text's first 256 word
# pieces (about 1,000 characters of English) anyway.
SEMANTIC_MAX_PROMPT_CHARS = 2_000


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The client's wishes: `read` False skips lookups (bypass), `write` False skips storing (no-store)."""

    read: bool = True
    write: bool = True


def cache_control_from_headers(headers: Mapping[str, str]) -> CacheControl:
    """`x-llmops-cache: bypass|no-store` and `Cache-Control: no-cache|no-store`, in any combination."""
    directives = {part.strip().lower() for part in (headers.get(CACHE_HEADER) or "").split(",")}
    directives |= {part.strip().lower().split("=")[0] for part in (headers.get("cache-control") or "").split(",")}
    return CacheControl(read=not directives & {"bypass", "no-cache"}, write="no-store" not in directives)


def canonical_json(request: dict) -> bytes:
    """The request's top-level fields sorted (their order says nothing), everything within them in the order sent:
    a strict structured output writes a schema's properties in their order, so two orders are two answers."""
    return orjson.dumps(dict(sorted(request.items())))


def canonical_request(body: dict) -> dict:
    """Everything in the request that can change the answer."""
    return {key: value for key, value in body.items() if key not in DELIVERY_FIELDS}


def embeddings_canonical_request(body: dict) -> dict:
    """Everything in an embeddings request that can change the answer: its inputs and options, the encoding of the
    vectors (float unless asked otherwise, as OpenAI's default) included, marked so no chat request can share it."""
    return {
        **canonical_request(body),
        "encoding_format": body.get("encoding_format") or "float",
        "endpoint": "embeddings",
    }


def upstream_identity(model: "ModelEntry") -> str:
    """What answers for a catalog model: its provider (kind, name, address) and the name the provider knows the model
    by. Part of every key, so a catalog name remapped to another model or provider finds none of the answers the
    one before gave."""
    provider = model.provider
    return "\0".join((provider.kind, provider.name, provider.base_url, model.upstream_name))


# Version 2 keeps nested order (canonical_json): a request whose nested keys happen to be in sorted order would
# otherwise find an entry keyed when every level was sorted, made for a request in another order.
EXACT_KEY_PURPOSE, CONTEXT_PURPOSE = "cache.exact-key.v2", "cache.context.v2"


def exact_key(*, tenant_id: int, served_model: str, upstream: str, request: dict) -> str:
    return keyed_hash(
        purpose=EXACT_KEY_PURPOSE,
        value=f"{tenant_id}\0{served_model}\0{upstream}\0".encode() + canonical_json(request),
    )


def is_cacheable(body: dict, *, allow_nondeterministic: bool) -> bool:
    """Deterministic requests only, unless the rule opts in; one choice only (n>1 asks for variety); no log
    probabilities (an answer is stored without them, so a replay could not give them back)."""
    if (body.get("n") or 1) != 1 or body.get("logprobs"):
        return False
    return allow_nondeterministic or body.get("temperature") == 0


def message_text(message: dict) -> str | None:
    """A message's text, or None when it carries anything but text (images, audio)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
        return "".join(part.get("text", "") for part in content)
    return None


def normalize_prompt(text: str) -> str:
    return _SPACE.sub(" ", text).strip(_EDGE_PUNCTUATION).lower()


@dataclass(frozen=True, slots=True)
class SemanticKey:
    # The last user turn normalised: what is embedded, and what the near-miss guard and the cross-encoder read (as
    # they were trained and measured).
    prompt: str
    # The same turn as sent: what an entry keeps, so a prompt that differs only in what normalisation drops is told
    # apart from a true repeat.
    text: str
    context_fingerprint: str


def semantic_key(request: dict, *, upstream: str) -> SemanticKey | None:
    """The last user turn, normalised, and a fingerprint of everything else: the system prompt, earlier turns, the
    last turn's other fields (its `name`), answer-changing options, the upstream that answers and the embedder whose
    vectors are compared (`embedder_identity`: another one's, even of the same size, are not comparable). None when the
    request cannot be matched by meaning: no final text user turn, one longer than SEMANTIC_MAX_PROMPT_CHARS, or one
    in which redaction finds personal data or a secret. Such a prompt is answered from the cache only when repeated
    exactly, so the text the semantic cache keeps is always what redaction leaves unchanged, and two prompts that
    differ only in a redacted detail (another card, another address) never share an answer."""
    messages = request.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return None
    last = messages[-1]
    text = message_text(last)
    if not text or not text.strip() or len(text) > SEMANTIC_MAX_PROMPT_CHARS or redact(text) != text:
        return None
    # The last turn's other fields stay in: who asks "what is my name?" (its `name`) changes the answer.
    context = {**request, "messages": [*messages[:-1], {key: value for key, value in last.items() if key != "content"}]}
    return SemanticKey(
        prompt=normalize_prompt(text),
        text=text,
        context_fingerprint=keyed_hash(
            purpose=CONTEXT_PURPOSE,
            value=b"\0".join((upstream.encode(), embedder_identity().encode(), canonical_json(context))),
        ),
    )
