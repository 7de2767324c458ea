"""Errors on /v1/messages in Anthropic's shape, so the anthropic SDK raises its own exception classes:

    {"type": "error", "error": {"type": "not_found_error", "message": "...", "details": {"error_code": "..."}},
     "request_id": "req_..."}

The gateway's own code (``model_not_found``, ``budget_exceeded``, ...) is ``error.details.error_code``, which the SDK
gives as the exception's ``error_code``. Statuses are the gateway's, except 503 (a circuit open on every model of the
chain, budget counters or the database unreachable): 529 ``overloaded_error``, Anthropic's "temporarily unable,
retry". A budget refusal says ``x-should-retry: false``: the SDK would otherwise retry a refusal that holds until the
period ends.
"""

import orjson
from django.http import HttpResponse

from llmops.gateway.errors import GatewayError, handled_error

OVERLOADED_STATUS = 529
# The gateway's statuses that Anthropic's API names otherwise; the ledger row records the status the client saw.
STATUSES_SHOWN = {503: OVERLOADED_STATUS}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    OVERLOADED_STATUS: "overloaded_error",
}
# What a failure that ends a stream is, by the chat error's type or, for the upstream's failures, its code.
STREAM_ERROR_TYPES_BY_CODE = {"upstream_circuit_open": "overloaded_error", "upstream_timeout": "timeout_error"}
STREAM_ERROR_TYPES = frozenset({"invalid_request_error", "rate_limit_error", "permission_error"})
NOT_RETRIED_CODES = frozenset({"budget_exceeded"})


def anthropic_status(error: GatewayError) -> int:
    return STATUSES_SHOWN.get(error.status_code, error.status_code)


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def stream_error_type(chat_type: str | None, code: str | None) -> str:
    """The Anthropic type of the chat error event that ends a stream (which carries no status)."""
    if code in STREAM_ERROR_TYPES_BY_CODE:
        return STREAM_ERROR_TYPES_BY_CODE[code]
    return chat_type if chat_type in STREAM_ERROR_TYPES else "api_error"


def anthropic_error_response(error: GatewayError, *, request_id: str) -> HttpResponse:
    status = anthropic_status(error)
    payload = {
        "type": "error",
        "error": {"type": error_type(status), "message": error.message, "details": {"error_code": error.code}},
        "request_id": request_id,
    }
    response = HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")
    for name, value in error.headers.items():
        response[name] = value
    if error.code in NOT_RETRIED_CODES:
        response["x-should-retry"] = "false"
    return response


def anthropic_exception_handler(exc, context):
    """As ``openai_exception_handler``, in Anthropic's shape."""
    return anthropic_error_response(handled_error(exc, context["request"].path), request_id=context["view"].request_id)
