"""What every provider adapter shares: the error classes, the reply and stream shapes, the pooled HTTP transport.

Adapters speak their provider's API and hand back OpenAI's chat completion format, so the
pipeline reads one shape whatever the provider.
"""

import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple, Protocol, TypeVar

import httpx
import orjson
from django.conf import settings
from httpx_sse import EventSource, ServerSentEvent, SSEError

from core.event_loops import PerEventLoop
from routing.catalog import ModelEntry, ProviderEntry
from routing.max_tokens import MAX_TOKENS_FIELDS
from routing.providers import prompt_cache
from routing.providers.transport import Http1Transport

USER_AGENT = "llmops"
# One connection pool per event loop: connections are reused across requests, never shared between loops.
_transports = PerEventLoop(lambda loop: Http1Transport(max_connections=settings.LLMOPS_UPSTREAM_MAX_CONNECTIONS))


class UpstreamError(Exception):
    """The upstream could not give an answer. ``upstream_status`` is its HTTP status when it sent one.

    ``retry_after`` is the wait in seconds the provider asked for, if any. The fallback logic sets
    ``attempts`` to the number of calls made before giving up, ``last_model`` to the model tried last, and
    ``billed_failures`` to the attempts that failed in a way the provider may bill (routing.resilience.BilledFailure,
    this one included when it is one).
    """

    code = "upstream_error"
    # Whether the provider may bill the attempt that failed so: it answered (UpstreamInvalidResponse), or it had the
    # whole request when it went quiet (an UpstreamTimeout waiting for the answer).
    billable = False

    def __init__(
        self, message: str, *, upstream_status: int | None = None, elapsed_ms: int = 0, retry_after: float | None = None
    ):
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.elapsed_ms = elapsed_ms
        self.retry_after = retry_after
        self.attempts = 1
        self.last_model: ModelEntry | None = None
        self.billed_failures: tuple = ()


class UpstreamTimeout(UpstreamError):
    """No answer in time. ``request_sent``: the provider had the whole request (the wait was for its answer), so it
    may bill at least the prompt."""

    code = "upstream_timeout"

    def __init__(self, message: str, *, elapsed_ms: int = 0, request_sent: bool = False):
        super().__init__(message, elapsed_ms=elapsed_ms)
        self.billable = request_sent


class UpstreamConnectionError(UpstreamError):
    code = "upstream_connection_error"


class UpstreamStreamTruncated(UpstreamError):
    """The stream ended without OpenAI's closing ``data: [DONE]``."""

    code = "upstream_stream_truncated"


class UpstreamInvalidResponse(UpstreamError):
    """The upstream answered, but not with a chat completion the gateway can read and price: a body or an event that
    is not the shape OpenAI's API gives (or that the adapter could not translate), or usage that is not a count of
    tokens. ``completion_text`` is whatever answer text could be read, for the gateway's own estimate of the cost.

    Like a body that is not JSON, it counts as a failure of the provider: retried, then the next model of the chain.
    """

    code = "upstream_invalid_response"
    billable = True

    def __init__(
        self, message: str, *, elapsed_ms: int = 0, completion_text: str = "", service_tier: str | None = None
    ):
        super().__init__(message, elapsed_ms=elapsed_ms)
        self.completion_text = completion_text
        # The tier the answer says it was served at, which its estimated cost is charged at as well.
        self.service_tier = service_tier


class MalformedAnswer(ValueError):
    """What is wrong with an upstream body, event or usage; adapters raise it as an UpstreamInvalidResponse."""


class UpstreamRejected(UpstreamError):
    """The upstream answered with an error status (4xx or 5xx)."""

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        error_body: dict | None,
        elapsed_ms: int,
        retry_after: float | None = None,
    ):
        super().__init__(message, upstream_status=upstream_status, elapsed_ms=elapsed_ms, retry_after=retry_after)
        self.error_body = error_body


class RequestRefused(UpstreamRejected):
    """The request asks the provider for something it would refuse, or bill beyond the catalog's prices; refused
    before any call, as a 400 naming ``param`` with ``code`` (llmops.gateway.errors.upstream_failure)."""

    def __init__(self, message: str, *, param: str, code: str):
        super().__init__(message, upstream_status=400, error_body=None, elapsed_ms=0)
        self.param = param
        self.code = code


@dataclass(slots=True)
class UpstreamReply:
    body: dict
    raw: bytes
    elapsed_ms: int
    # The stop sequence that ended the answer, when the provider says which (the chat form's ``stop`` finish reason
    # does not): kept beside the answer, not in it, which is OpenAI's shape.
    stop_sequence: str | None = None


class UpstreamStream(Protocol):
    """An open streaming answer in OpenAI's SSE format: ``data: {chunk}`` events, then ``data: [DONE]``."""

    provider: ProviderEntry
    # As UpstreamReply's, once the finishing chunk has been read, for a provider that names it outside the chunks
    # (Anthropic); vLLM names it on its finishing chunk (``named_stop_sequence``).
    stop_sequence: str | None

    def events(self) -> AsyncIterator[str]: ...

    def partial_usage(self) -> dict | None:
        """The usage the provider reported before the stream's end, in OpenAI's shape (Anthropic's prompt counts, at
        its start), or None: what a stream cut short keeps of it. Raises MalformedAnswer for counts that are not."""

    def elapsed_ms(self) -> int: ...

    async def aclose(self) -> None: ...


def upstream_transport() -> Http1Transport:
    return _transports.get()


async def upstream_client_close() -> None:
    """Close this event loop's pool and its connections; for a loop that ends before its process does."""
    transport = _transports.pop()
    if transport is not None:
        await transport.aclose()


def json_post(provider: ProviderEntry, path: str, payload: dict, *, headers: dict[str, str]) -> httpx.Request:
    """A JSON POST to ``path`` under the provider's base URL."""
    return upstream_request(
        "POST",
        provider_url(provider.base_url, path),
        content=orjson.dumps(payload),
        headers={"content-type": "application/json", **headers},
        timeout=provider_timeout(provider),
    )


@functools.lru_cache(maxsize=1024)
def provider_url(base_url: str, path: str) -> httpx.URL:
    """``path`` under a provider's base URL, parsed once: httpx's parse of a URL string was about a tenth of a
    provider call's CPU. (An httpx.URL is immutable: each request copies it.)"""
    return httpx.URL(f"{base_url}{path}")


def upstream_request(
    method: str, url: str | httpx.URL, *, content: bytes, headers: dict, timeout: httpx.Timeout
) -> httpx.Request:
    """A request to a provider. It goes straight to the transport, without an httpx client: no cookie jar (a
    provider's cookie must not follow one tenant's request into another's), no redirects, no auth but the headers."""
    return httpx.Request(
        method,
        url,
        content=content,
        headers={"user-agent": USER_AGENT, **headers},
        extensions={"timeout": timeout.as_dict()},
    )


def provider_timeout(provider: ProviderEntry) -> httpx.Timeout:
    return httpx.Timeout(provider.timeout_seconds, connect=min(provider.timeout_seconds, 5.0))


def elapsed_ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``retry-after`` as seconds or an HTTP date."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


async def send_request(
    provider: ProviderEntry, request: httpx.Request, *, stream: bool, started: float
) -> httpx.Response:
    """Send over the pool, turning transport failures into upstream errors. Unless ``stream``, the body is read."""
    try:
        return await upstream_transport().send(request, stream=stream)
    except httpx.TransportError as exc:
        raise transport_failure(provider, exc, started) from exc
    except httpx.DecodingError as exc:
        raise undecodable(provider, exc, started) from exc


def undecodable(provider: ProviderEntry, exc: httpx.DecodingError, started: float) -> UpstreamInvalidResponse:
    """An answer whose body its Content-Encoding does not decode: the provider's failure, as any answer the gateway
    cannot read is."""
    problem = MalformedAnswer(f"a body its Content-Encoding does not decode ({exc})")
    return invalid_response(provider, problem, elapsed_ms=elapsed_ms_since(started))


def transport_failure(provider: ProviderEntry, exc: httpx.TransportError, started: float) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(
            f"provider {provider.name} did not answer within {provider.timeout_seconds:g}s",
            elapsed_ms=elapsed_ms_since(started),
            # A read waits once the request is written; a connect, write or pool timeout sent none of it whole.
            request_sent=isinstance(exc, httpx.ReadTimeout),
        )
    return UpstreamConnectionError(
        f"cannot reach provider {provider.name}: {exc.__class__.__name__}", elapsed_ms=elapsed_ms_since(started)
    )


async def send_or_reject(
    provider: ProviderEntry, request: httpx.Request, *, stream: bool, started: float
) -> httpx.Response:
    """``send_request``, with an error status raised as its UpstreamRejected (a stream's body read and closed first)."""
    response = await send_request(provider, request, stream=stream, started=started)
    if response.status_code < 400:
        return response
    if stream:
        try:
            content = await response.aread()
        except (httpx.DecodingError, httpx.TransportError):
            # A body that does not decode or does not arrive whole: its status and Retry-After still say what happened.
            content = b""
        finally:
            await response.aclose()
    else:
        content = response.content
    raise rejection(provider, response, content, started)


def rejection(provider: ProviderEntry, response: httpx.Response, content: bytes, started: float) -> UpstreamRejected:
    """An error status as an UpstreamRejected, with the provider's own message (OpenAI and Anthropic nest it alike)."""
    try:
        error_body = orjson.loads(content)
        message = error_body["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        error_body, message = None, content[:200].decode(errors="replace") or "(no body)"
    return UpstreamRejected(
        f"provider {provider.name} answered {response.status_code}: {message}",
        upstream_status=response.status_code,
        error_body=error_body,
        elapsed_ms=elapsed_ms_since(started),
        retry_after=parse_retry_after(response.headers),
    )


def invalid_response(
    provider: ProviderEntry,
    problem: Exception,
    *,
    elapsed_ms: int,
    completion_text: str = "",
    service_tier: str | None = None,
) -> UpstreamInvalidResponse:
    return UpstreamInvalidResponse(
        f"provider {provider.name} sent an answer the gateway cannot use: {problem}",
        elapsed_ms=elapsed_ms,
        completion_text=completion_text,
        service_tier=service_tier,
    )


# No model's context comes near this: a count above it is a provider's fault, never a bill. The gateway also
# bounds usage by what the request could take and produce (llmops.gateway.call.UsageCeiling).
MAX_TOKEN_COUNT = 100_000_000
USAGE_DETAIL_FIELDS = ("cached_tokens", "cache_write_tokens")


def token_count(value, name: str) -> int:
    """A token count as providers must report it: a JSON integer from 0 to MAX_TOKEN_COUNT."""
    if type(value) is not int or not 0 <= value <= MAX_TOKEN_COUNT:
        raise MalformedAnswer(f"{name} is {repr(value)[:40]}, not a count of tokens")
    return value


def reported_tokens(usage, name: str) -> int:
    """One field of a provider's own usage object (0 when absent), checked as ``token_count`` checks."""
    if not isinstance(usage, dict):
        raise MalformedAnswer("usage is not an object")
    value = usage.get(name)
    return 0 if value is None else token_count(value, f"usage.{name}")


def untranslatable(exc: Exception, *, what: str) -> MalformedAnswer:
    """A provider's body or event that an adapter could not translate into OpenAI's format."""
    if isinstance(exc, MalformedAnswer):
        return exc
    return MalformedAnswer(f"{what} that cannot be read ({exc.__class__.__name__}: {str(exc)[:80]})")


# What reading a provider's JSON of an unexpected shape raises.
TRANSLATION_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def translated_reply(
    provider: ProviderEntry, translate: Callable[[], dict], *, what: str, started: float
) -> UpstreamReply:
    """The chat.completion an adapter translated from its provider's answer (``what``, e.g. "a body"), checked; an
    answer it cannot translate is the provider's failure."""
    try:
        reply = checked_chat_completion(translate())
    except TRANSLATION_ERRORS as exc:
        problem = untranslatable(exc, what=what)
        raise invalid_response(provider, problem, elapsed_ms=elapsed_ms_since(started)) from exc
    return UpstreamReply(body=reply, raw=orjson.dumps(reply), elapsed_ms=elapsed_ms_since(started))


def translated_events(
    provider: ProviderEntry, translate: Callable[[dict], list[dict]], event: dict, *, elapsed_ms: int
) -> list[str]:
    """A provider's stream event as OpenAI SSE events; one the adapter cannot translate is the provider's failure."""
    try:
        chunks = translate(event)
    except TRANSLATION_ERRORS as exc:
        problem = untranslatable(exc, what="a stream event")
        raise invalid_response(provider, problem, elapsed_ms=elapsed_ms) from exc
    return [sse_event(chunk) for chunk in chunks]


class TranslatedStream(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...


Opening = TypeVar("Opening", bound=TranslatedStream)


async def stream_opened(stream: Opening) -> Opening:
    """The stream once its first event is in, so a provider that fails before sending anything fails the open (where
    a fallback can still take over); closed when the open fails."""
    try:
        await stream.open()
    except BaseException:
        await stream.aclose()
        raise
    return stream


class UsageFields(NamedTuple):
    """Where a provider's usage object keeps each count OpenAI's usage needs."""

    uncached_input: str
    cache_read: str
    cache_write: str
    output: str

    def openai_usage_of(self, usage: dict) -> dict:
        """The provider's usage object, each count checked, in OpenAI's shape."""
        return openai_usage(**{count: reported_tokens(usage, name) for count, name in self._asdict().items()})

    def reported_usage(self, usage) -> dict | None:
        """``openai_usage_of`` the usage an answer reported; None when it reported none (absent, null or empty), which
        the gateway then counts itself (llmops.gateway.call.reply_usage) rather than charge nothing."""
        return None if usage is None or usage == {} else self.openai_usage_of(usage)


class UntranslatedPart(Exception):
    """A content part of a ``kind`` neither translation sends, at ``position`` in its message's content, which
    ``conversation`` refuses naming it."""

    def __init__(self, position: int, kind):
        super().__init__(position, kind)
        self.position = position
        self.kind = kind


def carried_parts(content: list) -> Iterator[dict]:
    """The parts of a message's content that reach the provider as blocks (``prompt_cache.carried_part``: a blank text
    is none). A part of another type raises UntranslatedPart: a file, whose document neither translation sends."""
    for position, part in enumerate(content):
        if part.get("type") not in prompt_cache.CARRIED_PARTS:
            raise UntranslatedPart(position, part.get("type"))
        if prompt_cache.carried_part(part):
            yield part


def conversation(
    body: dict,
    *,
    api: str,
    system_blocks: Callable[[object], list[dict]],
    content_blocks: Callable[[object], list[dict]],
    tool_use_block: Callable[[dict], dict],
    tool_result_blocks: Callable[[dict], list[dict]],
) -> tuple[list[dict], list[dict]]:
    """The request's OpenAI messages as a system prompt apart and alternating user and assistant turns, as Anthropic
    and Converse take them: consecutive turns of one role merge, and tool results are the user's. The callables build
    the blocks of the provider's format from a message's content, a tool call, and a tool message.

    An assistant's ``refusal`` is text it said, sent as such. Legacy function calling (an assistant's
    ``function_call``, a ``function`` message) raises RequestRefused naming it: neither API takes it, and its tool_use
    would need an id the call never had. So does a content part the blocks leave out (UntranslatedPart, a file): the
    model would answer about a document it never saw."""
    system: list[dict] = []
    messages: list[dict] = []
    try:
        for index, message in enumerate(body["messages"]):
            role = message.get("role")
            if role in ("system", "developer"):
                system.extend(system_blocks(message.get("content")))
                continue
            if role == "tool":
                blocks, role = tool_result_blocks(message), "user"
            elif role == "function":
                what = "a legacy function message (send the result as a tool message)"
                raise unsupported_by(api, body, param=f"messages[{index}].role", what=what)
            else:
                blocks = content_blocks(message.get("content"))
                if role == "assistant":
                    if message.get("function_call") is not None:
                        what = "a legacy function call (send it as tool_calls)"
                        raise unsupported_by(api, body, param=f"messages[{index}].function_call", what=what)
                    if message.get("refusal"):
                        blocks += content_blocks(message["refusal"])
                    blocks += [tool_use_block(call) for call in message.get("tool_calls") or []]
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"].extend(blocks)
            else:
                messages.append({"role": role, "content": blocks})
    except UntranslatedPart as part:
        param = f"messages[{index}].content[{part.position}].type"
        what = f"a content part of type `{part.kind}` (the gateway does not translate it)"
        raise unsupported_by(api, body, param=param, what=what) from None
    return system, messages


def checked_usage(usage) -> dict | None:
    """An OpenAI usage object the gateway can price (None when there is none); raises MalformedAnswer otherwise."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise MalformedAnswer("usage is not an object")
    prompt_tokens = token_count(usage.get("prompt_tokens"), "usage.prompt_tokens")
    token_count(usage.get("completion_tokens"), "usage.completion_tokens")
    details = usage.get("prompt_tokens_details")
    if details is None:
        return usage
    if not isinstance(details, dict):
        raise MalformedAnswer("usage.prompt_tokens_details is not an object")
    counted = sum(
        token_count(details[name], f"usage.prompt_tokens_details.{name}")
        for name in USAGE_DETAIL_FIELDS
        if details.get(name) is not None
    )
    if counted > prompt_tokens:
        raise MalformedAnswer("usage counts more cached prompt tokens than prompt tokens")
    return usage


def _is_parts(content) -> bool:
    return isinstance(content, list) and all(
        isinstance(part, dict) and (part.get("type") != "text" or isinstance(part.get("text"), str)) for part in content
    )


def _check_message(message, where: str) -> None:
    """A message's content is a string or null; a whole message's may also be a list of parts, as some
    OpenAI-compatible providers send (a stream's delta is appended as text, so it may not)."""
    if not isinstance(message, dict):
        raise MalformedAnswer(f"{where} is not an object")
    content = message.get("content")
    if not (content is None or isinstance(content, str) or (where.endswith("message") and _is_parts(content))):
        raise MalformedAnswer(f"{where}.content is not a string")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and not (isinstance(tool_calls, list) and all(isinstance(c, dict) for c in tool_calls)):
        raise MalformedAnswer(f"{where}.tool_calls is not a list of objects")


def _check_choice(choice, *, part: str) -> None:
    if not isinstance(choice, dict):
        raise MalformedAnswer("a choice is not an object")
    if choice.get("index") is not None and type(choice["index"]) is not int:
        raise MalformedAnswer("a choice's index is not an integer")
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise MalformedAnswer("a choice's finish_reason is not a string")
    if part == "delta" and choice.get("delta") is None:
        return
    _check_message(choice.get(part), f"choices[].{part}")


def checked_chat_completion(body) -> dict:
    """A chat.completion body the gateway can read, cache and price; raises MalformedAnswer otherwise."""
    if not isinstance(body, dict):
        raise MalformedAnswer("the body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedAnswer("choices is not a list of answers")
    for choice in choices:
        _check_choice(choice, part="message")
    checked_usage(body.get("usage"))
    return body


def checked_embeddings(body, *, inputs: int) -> dict:
    """An embeddings list answering ``inputs`` inputs that the gateway can price and pass on; raises MalformedAnswer
    otherwise. The vectors are passed to the client as sent: only their shape is read, not every number."""
    if not isinstance(body, dict):
        raise MalformedAnswer("the body is not a JSON object")
    data = body.get("data")
    if not isinstance(data, list) or len(data) != inputs:
        raise MalformedAnswer(f"data is not a list of {inputs} embeddings")
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("embedding"), list | str):
            raise MalformedAnswer("an embedding is not a list of numbers or a base64 string")
    usage = body.get("usage")
    if usage is not None:
        reported_tokens(usage, "prompt_tokens")
    return body


def checked_chunk(data: str) -> dict:
    """One streamed chat.completion.chunk (an SSE event's data) the gateway can read; raises MalformedAnswer."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedAnswer("a stream event that is not JSON") from None
    if not isinstance(chunk, dict):
        raise MalformedAnswer("a stream event that is not a JSON object")
    choices = chunk.get("choices")
    if choices is not None:
        if not isinstance(choices, list):
            raise MalformedAnswer("a stream event's choices is not a list")
        for choice in choices:
            _check_choice(choice, part="delta")
    model = chunk.get("model")
    if model is not None and not isinstance(model, str):
        raise MalformedAnswer("a stream event's model is not a string")
    checked_usage(chunk.get("usage"))
    return chunk


def answer_text(body, *, reasoning: bool = True) -> str:
    """What a chat.completion's answers were billed for as output, as text, read as far as its shape allows (for an
    estimate of their cost): each message's content, refusal, reasoning, and tool or function calls (their names and
    arguments). ``reasoning=False`` leaves the reasoning out, for a reader of what the answers say."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list):
        return ""
    messages = (choice.get("message") for choice in choices if isinstance(choice, dict))
    return "".join(billed_text(message, reasoning=reasoning) for message in messages if isinstance(message, dict))


# Where a message (or a delta) carries the reasoning a model wrote before its answer, billed as output tokens:
# DeepSeek's ``reasoning_content``, OpenRouter's ``reasoning``. vLLM has sent both, the same text twice.
REASONING_FIELDS = ("reasoning_content", "reasoning")


def billed_text(message: dict, *, reasoning: bool = True) -> str:
    """A message's (or a stream chunk's delta's) output as text: its content, refusal, reasoning and calls' names and
    arguments; ``reasoning=False`` leaves the reasoning out."""
    refusal = message.get("refusal")
    calls = [message.get("function_call"), *(message.get("tool_calls") or [])]
    functions = [call.get("function", call) for call in calls if isinstance(call, dict)]
    called = "".join(
        f"{function.get('name') or ''}{function.get('arguments') or ''}"
        for function in functions
        if isinstance(function, dict)
    )
    thoughts = [text for field in REASONING_FIELDS if reasoning and isinstance(text := message.get(field), str)]
    # The same reasoning under both names was written, and billed, once.
    thought = "".join(dict.fromkeys(thoughts))
    return thought + message_text(message.get("content")) + (refusal if isinstance(refusal, str) else "") + called


def sse_event(payload: dict) -> str:
    return "data: " + orjson.dumps(payload).decode()


SSE_DONE = "data: [DONE]"


def openai_usage(*, uncached_input: int, cache_read: int, cache_write: int, output: int) -> dict:
    """Usage in OpenAI's shape: prompt_tokens counts every input token, cached or written to the cache."""
    prompt_tokens = uncached_input + cache_read + cache_write
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": output,
        "total_tokens": prompt_tokens + output,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }


def message_text(content) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` → ("image/png", "AAAA"); None for any other URL."""
    if not url.startswith("data:") or ";base64," not in url:
        return None
    media_type, data = url[5:].split(";base64,", 1)
    return media_type, data


class Untranslated(NamedTuple):
    """A chat parameter an adapter does not translate: whether a value asks for nothing (what leaving it out asks),
    and what any other value asks for."""

    asks_nothing: Callable[[object], bool]
    what: str


# Chat parameters that change the answer or its cost and that neither Anthropic's Messages API nor Bedrock's Converse
# takes. Dropped, the client would get a 200 without what it asked for; so any value but the one that asks for nothing
# is refused (``refuse_untranslated``).
UNTRANSLATED_PARAMETERS = {
    "response_format": Untranslated(lambda value: value["type"] == "text", "a response format other than text"),
    # No reasoning, as these models answer when not asked for their extended thinking.
    "reasoning_effort": Untranslated(lambda value: value == "none", "a reasoning effort"),
    # OpenAI's default, so asking for it asks for nothing.
    "verbosity": Untranslated(lambda value: value == "medium", "a verbosity other than medium"),
    "n": Untranslated(lambda value: value == 1, "more than one choice"),
    "best_of": Untranslated(lambda value: value == 1, "the best of several answers"),
    "logprobs": Untranslated(lambda value: value is False, "log probabilities"),
    "top_logprobs": Untranslated(lambda value: value == 0, "log probabilities"),
    "logit_bias": Untranslated(lambda value: not value, "a logit bias"),
    "presence_penalty": Untranslated(lambda value: value == 0, "a presence penalty"),
    "frequency_penalty": Untranslated(lambda value: value == 0, "a frequency penalty"),
    # Neither API samples reproducibly from a seed.
    "seed": Untranslated(lambda value: False, "a seed"),
    # Served at the standard tier, a flex request would be charged the list price.
    "service_tier": Untranslated(
        lambda value: value in ("auto", "default"), "a service tier other than auto or default"
    ),
    "functions": Untranslated(lambda value: not value, "legacy functions (send them as tools)"),
}


# The chat fields the translations take at any value: those they read, and those that ask neither API for anything
# (an OpenAI account's stored completions, cache routing and abuse tracking, a latency hint, the text modality,
# `function_call` without `functions`; `user` on Bedrock). With UNTRANSLATED_PARAMETERS, the fields chat validation
# knows (llmops.gateway.chat.validation.FIELD_CHECKS). Any other field set (Anthropic's own `thinking`, a vLLM or
# OpenRouter sampler, a typo), which an OpenAI-compatible upstream is sent as it is, is refused: dropped, the answer
# would ignore it.
TRANSLATED_FIELDS = frozenset(
    {
        "model",
        "messages",
        *MAX_TOKENS_FIELDS,
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "prompt_cache_key",
        "safety_identifier",
        "prediction",
        "modalities",
        "function_call",
    }
)
MAX_ECHOED_NAME_CHARS = 64


def unsupported_by(api: str, body: dict, *, param: str, what: str) -> RequestRefused:
    """The refusal, before any call, of ``param``, which asks the model's ``api`` for ``what`` it cannot take."""
    return RequestRefused(
        f"The model `{body['model']}` is served through {api}, which cannot take {what}; send the request without "
        "it or to another model.",
        param=param,
        code="unsupported_parameter",
    )


def refuse_untranslated(api: str, body: dict) -> None:
    """Raise RequestRefused for a parameter of UNTRANSLATED_PARAMETERS set to a value that asks for something, or for
    a field that is not one of TRANSLATED_FIELDS set at all (null is leaving it out)."""
    # The body's few fields looked up in the tables, not the tables' in the body: this runs on every request.
    for param, value in body.items():
        if value is None:
            continue
        untranslated = UNTRANSLATED_PARAMETERS.get(param)
        if untranslated is None:
            if param not in TRANSLATED_FIELDS:
                raise _unknown_field(api, body, param)
        elif not untranslated.asks_nothing(value):
            raise unsupported_by(api, body, param=param, what=untranslated.what)


def _unknown_field(api: str, body: dict, name: str) -> RequestRefused:
    # A name the client made up is echoed bounded.
    if len(name) > MAX_ECHOED_NAME_CHARS:
        name = name[: MAX_ECHOED_NAME_CHARS - 3] + "..."
    return unsupported_by(api, body, param=name, what=f"the field `{name}` (the gateway does not translate it)")


def stop_sequences(body: dict) -> list[str]:
    stop = body.get("stop")
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def named_stop_sequence(choice: dict) -> str | None:
    """The stop sequence a chat completion choice (or a stream's finishing chunk) says ended it: vLLM's
    ``stop_reason``, when it is a string (it is the stop token's id when a token stopped it)."""
    named = choice.get("stop_reason")
    return named if isinstance(named, str) else None


def served_tier(answer) -> str | None:
    """The tier a chat completion (or a stream's chunk) says the provider served it at (OpenAI's `service_tier`), read
    as far as its shape allows."""
    tier = answer.get("service_tier") if isinstance(answer, dict) else None
    return tier if isinstance(tier, str) else None


def wants_usage_chunk(body: dict) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def completion_id(provider_id: str) -> str:
    return f"chatcmpl-{provider_id}" if provider_id else f"chatcmpl-{time.monotonic_ns()}"


def tool_call_arguments(tool_call: dict) -> dict:
    """An OpenAI tool call's JSON arguments as the object providers want; unparsable text is kept, not lost."""
    arguments = tool_call["function"].get("arguments") or "{}"
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"arguments": arguments}


def openai_tool_call(*, call_id: str, name: str, arguments: dict) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def chat_completion_reply(
    *, reply_id: str, model: str, text: str, tool_calls: list[dict], finish_reason: str, usage: dict | None
) -> dict:
    """An OpenAI chat.completion body with one choice; ``usage`` None when the provider reported none."""
    message = {"role": "assistant", "content": text or None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id(reply_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


class ChunkBuilder:
    """OpenAI chat.completion.chunk payloads of one stream, numbering tool calls as OpenAI does."""

    def __init__(self, *, model: str, include_usage: bool):
        self.include_usage = include_usage
        self.base = {"id": completion_id(""), "object": "chat.completion.chunk", "created": int(time.time())}
        self.base["model"] = model
        self.tool_index_by_block: dict[int, int] = {}

    def delta(self, delta: dict, finish_reason: str | None = None) -> dict:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    def usage(self, usage: dict) -> dict:
        return {**self.base, "choices": [], "usage": usage}

    def tool_call_start(self, *, block_index: int, call_id: str, name: str) -> dict:
        tool_index = len(self.tool_index_by_block)
        self.tool_index_by_block[block_index] = tool_index
        call = {"index": tool_index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        return self.delta({"tool_calls": [call]})

    def tool_call_arguments(self, *, block_index: int, partial_json: str) -> list[dict]:
        if block_index not in self.tool_index_by_block:
            return []
        call = {"index": self.tool_index_by_block[block_index], "function": {"arguments": partial_json}}
        return [self.delta({"tool_calls": [call]})]


async def sse_events(
    provider: ProviderEntry, response: httpx.Response, started: float
) -> AsyncIterator[ServerSentEvent]:
    """The events of a streaming response, with transport failures as upstream errors.

    httpx-sse parses them as the SSE specification says: lines end only at CR or LF (an answer's U+2028 or NEL stays
    inside its line, where httpx's ``aiter_lines`` would break it), comments are skipped, and an event the stream cut
    off before its blank line is not dispatched.
    """
    try:
        async for event in EventSource(response).aiter_sse():
            yield event
    except SSEError as exc:
        problem = MalformedAnswer("a stream that is not text/event-stream")
        raise invalid_response(provider, problem, elapsed_ms=elapsed_ms_since(started)) from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(
            f"provider {provider.name} stalled mid-stream", elapsed_ms=elapsed_ms_since(started), request_sent=True
        ) from exc
    except httpx.TransportError as exc:
        raise UpstreamConnectionError(
            f"provider {provider.name} broke off the stream", elapsed_ms=elapsed_ms_since(started)
        ) from exc
    except httpx.DecodingError as exc:
        raise undecodable(provider, exc, started) from exc
