"""Token counting with tiktoken, the way OpenAI counts chat prompts.

Encodings are loaded from TIKTOKEN_CACHE_DIR; where one cannot be loaded (no cache and no
network) counting falls back to an estimate of four characters a token and logs a warning once.
"""

import logging
from functools import lru_cache

import orjson

logger = logging.getLogger(__name__)

O200K_MODEL_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
# OpenAI's chat framing: every message costs 3 tokens, a name 1 more, and the reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
CHARS_PER_TOKEN_ESTIMATE = 4


def encoding_name_for(model: str) -> str:
    return "o200k_base" if model.lower().startswith(O200K_MODEL_PREFIXES) else "cl100k_base"


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
    return len(encoding.encode(text, disallowed_special=()))


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return orjson.dumps(content).decode()


def count_chat_tokens(messages: list[dict], *, model: str) -> int:
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += count_text_tokens(message.get("role", ""), model=model)
        total += count_text_tokens(_content_text(message.get("content")), model=model)
        if message.get("name"):
            total += TOKENS_PER_NAME + count_text_tokens(message["name"], model=model)
        if message.get("tool_calls"):
            total += count_text_tokens(orjson.dumps(message["tool_calls"]).decode(), model=model)
    return total
