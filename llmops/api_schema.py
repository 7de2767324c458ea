"""The OpenAPI schema at /api/schema/ (drf-spectacular): the management API, every error answer included.

Each operation documents the errors it can answer besides its own: the management API's shape (`ApiError`,
core/api.py) for session-authenticated endpoints, OpenAI's (`OpenAIError`) for the key-authenticated `/api/jobs`.
schemathesis checks the live answers against it (tests/security/test_hostile_input.py).
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from core.api import ApiErrorSerializer
from tenants.authentication import ApiKeyAuthentication

MANAGEMENT_API_PREFIX = "/api/"
BODY_METHODS = ("POST", "PUT", "PATCH")


def management_api_endpoints(endpoints):
    """drf-spectacular preprocessing hook: only /api/ (/v1 is OpenAI's API and documented by OpenAI)."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith(MANAGEMENT_API_PREFIX)]


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(allow_blank=True)
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField()


class OpenAIErrorSerializer(serializers.Serializer):
    """The gateway's error answer, in OpenAI's shape."""

    error = OpenAIErrorDetailSerializer()


class GatewayKeyScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "gatewayKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A gateway key: llmops-<prefix>-<secret>."}


class ApiAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        serializer, errors = self._error_responses()
        for status, description in errors.items():
            if str(status) not in responses:
                documented = OpenApiResponse(serializer, description=description)
                responses[str(status)] = self._get_response_for_code(
                    documented, str(status), ("application/json",), direction
                )
        return responses

    def _error_responses(self) -> tuple[type[serializers.Serializer], dict[int, str]]:
        has_body = self.method in BODY_METHODS
        has_query = any(parameter["in"] == "query" for parameter in self._get_parameters())
        has_path = "{" in self.path
        if any(isinstance(authenticator, ApiKeyAuthentication) for authenticator in self.view.get_authenticators()):
            errors = {401: "No gateway key, or an unknown, revoked or expired one."}
            if has_body:
                errors[400] = "The body is not valid JSON or not a valid request."
                errors[413] = "The body is over LLMOPS_MAX_BODY_BYTES."
            if has_path:
                errors[404] = "No such object for this key's tenant."
            return OpenAIErrorSerializer, errors
        errors = {
            403: "Not signed in, a missing CSRF token, or a role that may not do this.",
            404: "No such object, or one of a tenant the caller may not see (they answer alike).",
        }
        if has_body or has_query:
            errors[400] = "Invalid input: `invalid_request` with `details`, `invalid_json`, or the endpoint's own code."
        if has_body:
            errors[413] = "The body is over LLMOPS_MAX_BODY_BYTES."
        return ApiErrorSerializer, errors
