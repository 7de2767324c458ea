"""The last line of the /v1 API: a failure no view answered (a path no URL matches, a fault outside the views, a
request Django cannot read) still gets an OpenAI-shaped JSON error with a request id, never Django's HTML page.
``llmops.asgi`` puts it around the gateway's handler in place of Django's ``convert_exception_to_response``."""

import logging

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import HttpResponse
from django.http.multipartparser import MultiPartParserError

from llmops.gateway.call import new_request_id
from llmops.gateway.errors import (
    GatewayError,
    as_gateway_error,
    error_response,
    internal_error,
    invalid_request,
    request_id_headers,
)

logger = logging.getLogger(__name__)


def _error_for(exc: Exception) -> GatewayError:
    error = as_gateway_error(exc)
    if error is not None:
        return error
    if isinstance(exc, SuspiciousOperation | BadRequest | MultiPartParserError):
        return invalid_request("The request could not be read.")
    if isinstance(exc, PermissionDenied):
        return GatewayError("You may not do this.", status=403, code="permission_denied")
    logger.error("unhandled error on /v1", exc_info=exc)
    return internal_error()


def json_error_response(error: GatewayError) -> HttpResponse:
    return error_response(error, {**error.headers, **request_id_headers(new_request_id())})


def json_errors(get_response):
    """Wrap the handler's ``get_response``: an exception becomes its OpenAI error instead of Django's page."""

    async def inner(request, *args):
        try:
            return await get_response(request, *args)
        except Exception as exc:
            return json_error_response(_error_for(exc))

    return inner


def unreadable_request_response(status: int) -> HttpResponse:
    """For what Django refuses before any view: a body over DATA_UPLOAD_MAX_MEMORY_SIZE, headers not UTF-8."""
    if status == 413:
        return json_error_response(GatewayError("The request body is too large.", status=413, code="request_too_large"))
    return json_error_response(invalid_request("The request could not be read."))
