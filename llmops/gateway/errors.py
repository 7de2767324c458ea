"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's statuses,
so the official SDK raises its own exception classes."""

import logging
import math

import orjson
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions

from routing import upstream

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-llmops-request-id"
# The header OpenAI names a request with: its SDK reads it into ``_request_id`` and ``APIStatusError.request_id``.
OPENAI_REQUEST_ID_HEADER = "x-request-id"


def request_id_headers(request_id: str) -> dict[str, str]:
    """The headers that name a request: the gateway's own, and OpenAI's for its SDK."""
    return {REQUEST_ID_HEADER: request_id, OPENAI_REQUEST_ID_HEADER: request_id}


# What an outage of Postgres or Redis raises (a refused or dropped connection, a timeout, an exhausted pool).
OUTAGE_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)
# What a client is told to wait before trying again through an outage.
OUTAGE_RETRY_AFTER_SECONDS = 2
# The header the openai and anthropic SDKs read before retrying, set on a refusal no retry can change.
NOT_RETRYABLE = {"x-should-retry": "false"}

# OpenAI's error types where a status has its own; any other is `invalid_request_error` below 500 (a 409 conflict, a
# 415, a 422 too) and `api_error` from 500. Never empty: clients and the SDK's exceptions read `type`.
ERROR_TYPE_BY_STATUS = {
    403: "permission_error",
    429: "rate_limit_error",
}


def error_type_of(status: int) -> str:
    return ERROR_TYPE_BY_STATUS.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


class GatewayError(exceptions.APIException):
    """An error the gateway answers with, already in OpenAI's terms."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        param: str | None = None,
        error_type: str = "",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.headers = dict(headers or {})
        self.status_code = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type or error_type_of(status)

    @property
    def retryable(self) -> bool:
        """False for a refusal that no retry can change (it says ``x-should-retry: false``)."""
        return self.headers.get("x-should-retry") != "false"


def invalid_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(message, status=400, code=code, param=param)


def unstorable_answer_error(where: str, why: str, *, holder: str, charged_in: str) -> GatewayError:
    """The failure kept in place of an upstream answer the database could not give back as it was sent (``where`` and
    ``why``: ``core.db.unstorable_part``), by a job or a batch line (``holder``); the call stays charged, in
    ``charged_in``."""
    return GatewayError(
        f"The answer's '{where}' {why}, which {holder} cannot store to give back exactly. What the provider billed for "
        f"it is charged ({charged_in}).",
        status=502,
        code="upstream_answer_unstorable",
    )


def error_body(error: GatewayError) -> dict:
    """OpenAI's error object, all four fields always present (the SDK and clients read `param` even when null)."""
    return {"error": {"message": error.message, "type": error.error_type, "param": error.param, "code": error.code}}


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(error_body(error)), status=error.status_code, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def internal_error() -> GatewayError:
    return GatewayError("The server had an error while processing your request.", status=500, code="internal_error")


def service_unavailable() -> GatewayError:
    return GatewayError(
        "The service is briefly unavailable (its database or Redis cannot be reached); retry after Retry-After.",
        status=503,
        code="service_unavailable",
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
    )


def as_gateway_error(exc: Exception) -> GatewayError | None:
    """Translate what DRF and Django raise into the OpenAI error it stands for."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, OUTAGE_ERRORS):
        return service_unavailable()
    if isinstance(exc, exceptions.NotAuthenticated):
        return GatewayError(str(exc.detail), status=401, code="missing_api_key")
    if isinstance(exc, exceptions.AuthenticationFailed):
        return GatewayError(str(exc.detail), status=401, code="invalid_api_key")
    if isinstance(exc, exceptions.ParseError):
        return invalid_request(f"We could not parse the JSON body of your request: {exc.detail}", code="invalid_json")
    if isinstance(exc, RequestDataTooBig):
        return GatewayError("The request body is too large.", status=413, code="request_too_large")
    if isinstance(exc, exceptions.MethodNotAllowed):
        return GatewayError(str(exc.detail), status=405, code="method_not_allowed")
    if isinstance(exc, (Http404, exceptions.NotFound)):
        return GatewayError("Not found.", status=404, code="not_found")
    if isinstance(exc, exceptions.APIException):
        return GatewayError(str(exc.detail), status=exc.status_code, code=exc.default_code)
    return None


def handled_error(exc, path: str) -> GatewayError:
    """The error an exception raised in a view of ``path`` stands for; one the gateway cannot translate is logged, a
    500."""
    error = as_gateway_error(exc)
    if error is None:
        logger.exception("unhandled error on %s", path, exc_info=exc)
        return internal_error()
    if isinstance(exc, OUTAGE_ERRORS):
        logger.warning("%s answered 503: %s: %s", path, exc.__class__.__name__, exc)
    return error


def openai_error_response(exc: Exception, *, path: str) -> HttpResponse:
    """The OpenAI error answering an exception raised in a view of ``path``; a 401 names the scheme it wants."""
    error = handled_error(exc, path)
    headers = dict(error.headers)
    if error.status_code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="llmops"'
    return error_response(error, headers)


def openai_exception_handler(exc, context):
    """DRF's exception handler for the /v1 endpoints."""
    return openai_error_response(exc, path=context["request"].path)


def _provider_param(error_body: dict | None) -> str | None:
    """The request parameter a provider's OpenAI-shaped error names (``{"error": {"param": ...}}``), if any."""
    detail = error_body.get("error") if isinstance(error_body, dict) else None
    param = detail.get("param") if isinstance(detail, dict) else None
    return param if isinstance(param, str) and param else None


def upstream_failure(error: upstream.UpstreamError) -> GatewayError:
    """What the client is told when the upstream could not answer (after retries and fallbacks)."""
    if isinstance(error, upstream.UpstreamTimeout):
        return GatewayError(error.message, status=504, code=error.code)
    if isinstance(error, upstream.RequestRefused):
        return invalid_request(error.message, param=error.param, code=error.code)
    if isinstance(error, upstream.UpstreamRejected):
        status = error.upstream_status
        if status == 429:
            # The provider's wait, when it said one: the gateway gave up on it (over the retry policy's longest).
            headers = {"Retry-After": str(math.ceil(error.retry_after))} if error.retry_after is not None else None
            return GatewayError(error.message, status=429, code="upstream_rate_limited", headers=headers)
        if status in (400, 404, 409, 413, 422):
            return GatewayError(
                error.message, status=400, code="upstream_invalid_request", param=_provider_param(error.error_body)
            )
    status = 503 if error.code == "upstream_circuit_open" else 502
    return GatewayError(error.message, status=status, code=error.code)
