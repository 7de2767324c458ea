"""Middleware for the browser-facing site (admin, management API, dashboard); /v1 runs without it."""

from django.conf import settings
from django.http import JsonResponse

from core.api import api_error_for_status, api_error_payload
from tenants.audit import audit_actor

API_PATH_PREFIX = "/api/"


class AuditActorMiddleware:
    """Attributes configuration changes made while handling a request to the signed-in user."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with audit_actor(user=request.user):
            return self.get_response(request)


class PermissionsPolicyMiddleware:
    """Permissions-Policy on every answer that has not set its own (django-csp sets Content-Security-Policy)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Permissions-Policy", settings.LLMOPS_PERMISSIONS_POLICY)
        return response


class ApiJsonErrorsMiddleware:
    """Errors under /api/ that no API view answered (an unknown path, a method on it, a 500 anywhere in the stack)
    come back in the management API's JSON shape instead of Django's HTML pages. Outermost, so it sees them all.

    A write to an endpoint's path without its trailing slash is refused with a 404 naming the path to use, instead of
    APPEND_SLASH's redirect: clients follow a 301 with a GET, so the write would be lost while the caller saw a 200."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith(API_PATH_PREFIX) and _write_redirected_to_slash(request, response):
            message = (
                f"No such endpoint: {request.method} {request.path}. Send it to {request.path}/ "
                "(with the trailing slash); a redirect would turn the write into a GET."
            )
            return JsonResponse(api_error_payload(message, code="not_found"), status=404)
        if (
            request.path.startswith(API_PATH_PREFIX)
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            json_response = api_error_for_status(response.status_code, response.reason_phrase)
            for header in ("Allow", "Retry-After"):
                if header in response:
                    json_response[header] = response[header]
            return json_response
        return response


def _write_redirected_to_slash(request, response) -> bool:
    """Whether CommonMiddleware answered a write (not GET, HEAD or OPTIONS) with APPEND_SLASH's redirect."""
    return (
        request.method not in ("GET", "HEAD", "OPTIONS")
        and response.status_code in (301, 308)
        and response.get("Location") == request.get_full_path(force_append_slash=True)
    )
