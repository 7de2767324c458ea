"""Token counting with tiktoken, the way OpenAI counts chat prompts.

Encodings are loaded from TIKTOKEN_CACHE_DIR; where one cannot be loaded (no cache and no
network) counting falls back to an estimate of four characters a token and logs a warning once.

Counting costs CPU in proportion to the text. ``count_chat_tokens_async`` counts a large prompt on the CPU pool
(core.cpu: tiktoken releases the GIL while it encodes), and ``chat_tokens_lower_bound`` gives, from lengths alone,
a count the prompt cannot go under, so a prompt provably over a cap is refused without being counted at all.
"""

import logging
from collections.abc import Iterator, Sequence
from functools import lru_cache

import orjson

from core.cpu import OFFLOAD_MIN_CHARS, run_sized

logger = logging.getLogger(__name__)

# The encodings installed beside the gateway (TIKTOKEN_CACHE_DIR): any other would be downloaded on first use.
SHIPPED_ENCODINGS = frozenset({"o200k_base", "cl100k_base"})
O200K_MODEL_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
# OpenAI's chat framing: every message costs 3 tokens, a name 1 more, and the reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
CHARS_PER_TOKEN_ESTIMATE = 4
# The longest token of cl100k_base and of o200k_base stands for 128 bytes (a run of spaces); a test holds every
# encoding encoding_name_for can pick to it.
MAX_TOKEN_BYTES = 128


def encoding_name_for(model: str) -> str:
    """The encoding the gateway counts ``model``'s prompts in: tiktoken's for a name it knows (a fine-tune's
    ``ft:gpt-4o-mini:…`` included) among the encodings that ship with the gateway, else by the name's prefix."""
    known = known_encoding_name(model)
    if known in SHIPPED_ENCODINGS:
        return known
    return "o200k_base" if model.lower().startswith(O200K_MODEL_PREFIXES) else "cl100k_base"


@lru_cache(maxsize=1024)
def known_encoding_name(model: str) -> str | None:
    """The encoding ``model`` bills in, when tiktoken knows the model by its name; None for a name it does not know
    (a Llama or Mistral behind an OpenAI-compatible server, a deployment's own name), which encoding_name_for counts in
    cl100k_base all the same, though the model bills its own tokenizer's count."""
    try:
        from tiktoken.model import encoding_name_for_model

        return encoding_name_for_model(model)
    except (ImportError, KeyError):
        return None


@lru_cache(maxsize=4)
def _encoding(name: str):
    try:
        import tiktoken

        return tiktoken.get_encoding(name)
    except Exception:
        logger.warning("tiktoken encoding %s cannot be loaded; token counts are estimated", name)
        return None


def count_text_tokens(text: str, *, model: str) -> int:
    encoding = _encoding(encoding_name_for(model))
    if encoding is None:
        return -(-len(text) // CHARS_PER_TOKEN_ESTIMATE)
    if len(text) >= OFFLOAD_MIN_CHARS:
        try:
            # One buffer instead of a list of ints: once the Rust core is done, the GIL is held for microseconds
            # instead of tens of milliseconds.
            return len(encoding.encode_to_numpy(text, disallowed_special=()))
        except UnicodeEncodeError:
            pass  # lone surrogates, which encode() replaces
    return len(encoding.encode(text, disallowed_special=()))


def embedding_inputs(value) -> list[str | list[int]]:
    """The inputs of an embeddings request, each a text or an array of tokens: its ``input`` is one text, one array
    of tokens, or a list of either."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(item, int) for item in value):
        return [value]
    return list(value)


def count_embedding_tokens(inputs: list[str | list[int]], *, model: str) -> list[int]:
    """Each input's tokens: a text counted in the model's encoding, an array of tokens by its length."""
    return [len(item) if isinstance(item, list) else count_text_tokens(item, model=model) for item in inputs]


def proportional_split(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` cut into whole parts in proportion to ``weights`` that add up to it exactly: each part is the floor of
    its share, and what the floors leave goes one apiece to the largest remainders, the earliest first among equal
    ones, so the same inputs always split the same way. Equal weights when every weight is 0."""
    if not any(weights):
        weights = [1] * len(weights)
    whole = sum(weights)
    parts = [total * weight // whole for weight in weights]
    by_remainder = sorted(range(len(weights)), key=lambda index: (-(total * weights[index] % whole), index))
    for index in by_remainder[: total - sum(parts)]:
        parts[index] += 1
    return parts


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or part.get("refusal") or "" for part in content if isinstance(part, dict))
    return orjson.dumps(content).decode()


def _counted_texts(message: dict) -> Iterator[str]:
    """The texts of a message that are counted, each on its own: what the provider reads of it, and bills."""
    yield message.get("role", "")
    yield _content_text(message.get("content"))
    if message.get("name"):
        yield message["name"]
    if message.get("refusal"):
        yield message["refusal"]
    for calls in ("tool_calls", "function_call"):
        if message.get(calls):
            yield orjson.dumps(message[calls]).decode()


def _framing_tokens(messages: list[dict]) -> int:
    return REPLY_PRIMING_TOKENS + sum(
        TOKENS_PER_MESSAGE + (TOKENS_PER_NAME if message.get("name") else 0) for message in messages
    )


def count_chat_tokens(messages: list[dict], *, model: str) -> int:
    total = _framing_tokens(messages)
    for message in messages:
        total += sum(count_text_tokens(text, model=model) for text in _counted_texts(message))
    return total


def prompt_chars(messages: list[dict]) -> int:
    """How much text counting the prompt reads: what decides whether it is counted off the event loop."""
    return sum(len(text) for message in messages for text in _counted_texts(message))


async def count_chat_tokens_async(messages: list[dict], *, model: str) -> int:
    """count_chat_tokens, on the CPU pool when the prompt is large."""
    return await run_sized(prompt_chars(messages), count_chat_tokens, messages, model=model)


# The request's fields beside its messages that the provider reads as prompt, and bills: tool and function
# definitions (their descriptions and JSON schemas) and a response format's schema.
DEFINITION_FIELDS = ("tools", "functions", "response_format")


def _definition_texts(body: dict) -> list[str]:
    return [orjson.dumps(body[name]).decode() for name in DEFINITION_FIELDS if body.get(name)]


def _count_texts(texts: list[str], *, model: str) -> int:
    return sum(count_text_tokens(text, model=model) for text in texts)


def count_definition_tokens(body: dict, *, model: str) -> int:
    """The tokens of the request's tool and function definitions and response format, counted as their JSON: what
    no message holds but the provider bills as prompt (it frames them its own way, at about this length)."""
    return _count_texts(_definition_texts(body), model=model)


async def count_definition_tokens_async(body: dict, *, model: str) -> int:
    """count_definition_tokens, on the CPU pool when the definitions are large."""
    definitions = _definition_texts(body)
    if not definitions:
        return 0
    return await run_sized(sum(len(text) for text in definitions), _count_texts, definitions, model=model)


async def count_prompt_tokens_async(body: dict, *, model: str) -> int:
    """A chat request's prompt as it is billed: its messages and its definitions."""
    messages = await count_chat_tokens_async(body["messages"], model=model)
    return messages + await count_definition_tokens_async(body, model=model)


def utf8_length(text: str) -> int:
    # A surrogate (never in a body orjson parsed) counts as one byte, which can only lower the bound.
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def chat_tokens_lower_bound(messages: list[dict]) -> int:
    """A number count_chat_tokens never goes under, for any model, from lengths only (no encoding runs).

    tiktoken splits a text into tokens whose byte strings, joined, are the text's UTF-8 bytes (special tokens are
    counted as plain text here), and no token of the encodings in use stands for more than MAX_TOKEN_BYTES bytes: a
    text of b bytes is at least ceil(b / MAX_TOKEN_BYTES) tokens. The estimate used without an encoding,
    ceil(chars / 4), is never below that, as b <= 4 x chars. The chat framing is added exactly as it is counted.
    """
    content = sum(-(-utf8_length(text) // MAX_TOKEN_BYTES) for message in messages for text in _counted_texts(message))
    return _framing_tokens(messages) + content
