"""Every error the gateway answers has OpenAI's non-empty ``type``: the SDK's exceptions and clients read it."""

import pytest
from rest_framework import exceptions

from llmops.gateway.errors import GatewayError, as_gateway_error, error_body

# The statuses GatewayError is raised with (a grep of `status=` in its calls, and what routing, providers' batch
# errors and DRF's exceptions bring): each with the type OpenAI gives it.
TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
}


@pytest.mark.parametrize(("status", "error_type"), TYPES_BY_STATUS.items())
def test_each_status_in_use_has_openais_type(status, error_type):
    error = GatewayError("No.", status=status, code="some_code")

    assert error_body(error)["error"]["type"] == error_type


def test_no_error_status_has_an_empty_type():
    assert [status for status in range(400, 600) if not GatewayError("No.", status=status, code="c").error_type] == []


def test_an_explicit_type_is_kept():
    assert GatewayError("No.", status=429, code="budget_exceeded", error_type="insufficient_quota").error_type == (
        "insufficient_quota"
    )


@pytest.mark.parametrize(
    "exc", [exceptions.UnsupportedMediaType("text/csv"), exceptions.NotAcceptable(), exceptions.ValidationError("x")]
)
def test_what_drf_raises_gets_a_type_too(exc):
    assert as_gateway_error(exc).error_type == "invalid_request_error"
