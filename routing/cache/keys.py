"""What a request's cache key is made of, and whether the request may use the cache at all. Pure functions."""

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

CACHE_HEADER = "x-llmops-cache"
# Fields that change how an answer is delivered or attributed, never what it says.
DELIVERY_FIELDS = frozenset({"model", "stream", "stream_options", "user", "metadata", "store", "service_tier"})
_SPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = " \t\n.?!,;:\"'`"


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


def canonical_json(value) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def canonical_request(body: dict) -> dict:
    """Everything in the request that can change the answer."""
    return {key: value for key, value in body.items() if key not in DELIVERY_FIELDS}


def exact_key(*, tenant_id: int, served_model: str, request: dict) -> str:
    digest = hashlib.sha256()
    digest.update(f"{tenant_id}\0{served_model}\0".encode())
    digest.update(canonical_json(request))
    return digest.hexdigest()


def is_cacheable(body: dict, *, allow_nondeterministic: bool) -> bool:
    """Deterministic requests only, unless the rule opts in; one choice only (n>1 asks for variety)."""
    if (body.get("n") or 1) != 1:
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
    prompt: str
    context_fingerprint: str


def semantic_key(request: dict) -> SemanticKey | None:
    """The last user turn, normalised, and a fingerprint of everything else: the system prompt, earlier turns and
    answer-changing options. None when the request cannot be matched by meaning (no final text user turn)."""
    messages = request.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return None
    text = message_text(messages[-1])
    if not text or not text.strip():
        return None
    context = {**request, "messages": messages[:-1]}
    return SemanticKey(
        prompt=normalize_prompt(text), context_fingerprint=hashlib.sha256(canonical_json(context)).hexdigest()
    )
