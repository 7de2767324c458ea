"""The management API's error answers (`/api/`, session auth): one JSON shape for every refusal.

    {"error": {"code": "invalid_request", "message": "since: Enter a valid date.", "field": "since",
               "details": {"since": ["Enter a valid date."]}}}

`code` is stable and machine-readable, `message` is for people, `field` names the (first) input at fault or is "",
and `details` (validation errors only) lists every invalid input by its dotted path. Some errors add keys of their own
(a too-long CSV export points at the async export). `/api/jobs` is part of the gateway and answers in OpenAI's shape.
"""

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

CODE_BY_STATUS = {
    400: "bad_request",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "internal_error",
    503: "service_unavailable",
}
MESSAGE_BY_STATUS = {
    404: "No such endpoint or object. GET /api/schema/ lists the endpoints.",
    500: "Internal error.",
}


def api_error_payload(message: str, *, code: str, field: str = "", **extra) -> dict:
    return {"error": {"code": code, "message": message, "field": field, **extra}}


def api_error_response(message: str, *, code: str, field: str = "", status: int = 400, **extra) -> Response:
    return Response(api_error_payload(message, code=code, field=field, **extra), status=status)


def api_error_for_status(status: int, reason: str) -> JsonResponse:
    """The JSON answer for an error that Django (not a view) produced under /api/: an unknown path, a 500."""
    message = MESSAGE_BY_STATUS.get(status, reason)
    return JsonResponse(api_error_payload(message, code=CODE_BY_STATUS.get(status, "error")), status=status)


def validation_details(detail, path: str = "") -> dict[str, list[str]]:
    """DRF's nested validation errors as {dotted path: messages}; "" for errors about the whole input."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = "" if key == api_settings.NON_FIELD_ERRORS_KEY else str(key)
            flat.update(validation_details(value, f"{path}.{name}" if path and name else path or name))
        return flat
    if isinstance(detail, list) and not all(isinstance(item, str) for item in detail):
        flat = {}
        for index, item in enumerate(detail):  # a list field's errors: one entry per item, empty for valid ones
            flat.update(validation_details(item, f"{path}.{index}" if path else str(index)))
        return flat
    messages = [str(item) for item in detail] if isinstance(detail, list) else [str(detail)]
    return {path: messages} if messages else {}


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler (status, headers, rollback), answering in the management API's shape.

    Anything that is not an API error is left to Django, which logs it as a 500; ApiJsonErrorsMiddleware then
    answers it in this shape too."""
    if isinstance(exc, RequestDataTooBig):
        exc = exceptions.APIException("The request body is too large.")
        exc.status_code, exc.default_code = 413, "request_too_large"
    elif isinstance(exc, SuspiciousOperation):  # e.g. more form fields than DATA_UPLOAD_MAX_NUMBER_FIELDS
        exc = exceptions.APIException(str(exc))
        exc.status_code, exc.default_code = 400, "bad_request"
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        details = validation_details(exc.detail) or {"": ["Invalid input."]}
        field, messages = next(iter(details.items()))
        message = f"{field}: {messages[0]}" if field else messages[0]
        response.data = api_error_payload(message, code="invalid_request", field=field, details=details)
    else:
        if isinstance(exc, Http404):
            exc = exceptions.NotFound()
        elif isinstance(exc, PermissionDenied):
            exc = exceptions.PermissionDenied()
        code = "invalid_json" if isinstance(exc, exceptions.ParseError) else exc.default_code
        response.data = api_error_payload(str(response.data.get("detail", exc.detail)), code=code)
    return response


class ApiErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable: invalid_request, not_found, missing_date, …")
    message = serializers.CharField()
    field = serializers.CharField(allow_blank=True, help_text='The input at fault, as a dotted path, or "".')
    details = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Validation errors only: every invalid input and its messages.",
    )


class ApiErrorSerializer(serializers.Serializer):
    """The management API's error answer."""

    error = ApiErrorDetailSerializer()


@extend_schema_field({"type": "string", "pattern": "^[-a-zA-Z0-9_]*$", "maxLength": 64})
class TenantSlugField(serializers.CharField):
    """`tenant=<slug>`, optional. It is taken as given: a value that is no slug names no tenant and answers 404, like a
    tenant the caller may not see (tenants.selectors.tenant_named), so the answer tells nothing about which exist."""

    def __init__(self, **kwargs):
        super().__init__(required=False, allow_blank=True, trim_whitespace=False, **kwargs)
        self.validators = []
