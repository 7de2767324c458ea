"""Strict checks of an embeddings body (OpenAI's `POST /v1/embeddings`), each failure an OpenAI-shaped 400 naming the
parameter's path, as chat completions' are (llmops.gateway.chat.validation), whose refused fields it refuses too."""

from functools import partial

from llmops.gateway.chat.validation import FIELD_CHECKS as CHAT_FIELD_CHECKS
from llmops.gateway.chat.validation import (
    _choice,
    _integer,
    _missing,
    _refuse_unpriced,
    _string,
    _type_error,
    _value_error,
    validate_model,
)
from llmops.gateway.errors import invalid_request

# OpenAI's limits: at most 2,048 inputs a request; the tokens of each are bounded by the model's context window.
MAX_INPUTS = 2048
MAX_DIMENSIONS = 65_536
# Above any tokenizer's vocabulary: a larger id is no token.
MAX_TOKEN_ID = 2**31 - 1
ENCODING_FORMATS = ("float", "base64")
INPUT_SHAPES = "a string, an array of strings, an array of tokens (integers) or an array of arrays of tokens"


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_array(param: str, value: list, *, expected: str = "an integer (a token)") -> None:
    if not value:
        raise invalid_request(f"'{param}' must contain at least one token.", param=param, code="empty_array")
    for index, token in enumerate(value):
        if not _is_token(token):
            raise _type_error(f"{param}[{index}]", expected, token)
        if not 0 <= token <= MAX_TOKEN_ID:
            raise _value_error(f"{param}[{index}]", f"{token}. A token is an integer from 0 to {MAX_TOKEN_ID}.")


def _text(param: str, value: str) -> None:
    if not value:
        raise _value_error(param, "an empty string. Every input must have some text to embed.")


def _input(param: str, value) -> None:
    if isinstance(value, str):
        _text(param, value)
        return
    if not isinstance(value, list):
        raise _type_error(param, INPUT_SHAPES, value)
    if not value:
        raise invalid_request(f"'{param}' must contain at least one input.", param=param, code="empty_array")
    if _is_token(value[0]):
        # The first input is a token, so the list is an array of tokens: any later item that is not one is named.
        _token_array(
            param,
            value,
            expected=f"an integer (a token) as '{param}[0]' is (a list cannot mix tokens and other inputs)",
        )
        return
    if len(value) > MAX_INPUTS:
        raise _value_error(param, f"{len(value)} inputs. At most {MAX_INPUTS} are allowed in one request.")
    # The first input sets the list's shape: OpenAI takes strings or arrays of tokens in one list, never both.
    shape = str if isinstance(value[0], str) else list
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if isinstance(item, str) and shape is str:
            _text(where, item)
        elif isinstance(item, list) and shape is list:
            _token_array(where, item)
        elif isinstance(item, str | list):
            expected = "a string" if shape is str else "an array of tokens (integers)"
            raise _type_error(
                where, f"{expected} as '{param}[0]' is (a list cannot mix strings and token arrays)", item
            )
        else:
            raise _type_error(where, "a string or an array of tokens (integers)", item)


FIELD_CHECKS = {
    "encoding_format": partial(_choice, choices=ENCODING_FORMATS),
    "dimensions": partial(_integer, low=1, high=MAX_DIMENSIONS),
    "user": _string,
    # Checked as chat checks it, before the refusal of audio reads it as a list.
    "modalities": CHAT_FIELD_CHECKS["modalities"],
}


def validate_embeddings_request(body) -> dict:
    """The body when it is one the gateway can route, price and pass on. Fields it does not know are passed to the
    provider as they are, but for those chat completions refuse: a router upstream reads them on any endpoint, to
    answer with another model than the one priced or to send the call, with its provider key, elsewhere."""
    validate_model(body)
    if body.get("input") is None:
        raise _missing("input")
    _input("input", body["input"])
    for name, check in FIELD_CHECKS.items():
        if body.get(name) is not None:
            check(name, body[name])
    _refuse_unpriced(body)
    return body
