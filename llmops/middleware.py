"""Middleware for the browser-facing site (admin, management API, dashboard); /v1 runs without it."""

from django.conf import settings
from django.http import JsonResponse
from django.urls import is_valid_path

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

    A write to a path that exists only with a trailing slash is refused with a 404 naming the path to use, before
    CommonMiddleware's APPEND_SLASH would redirect it (clients follow a 301 with a GET: the write would be lost while
    the caller saw a 200) or, with DEBUG on, raise."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(API_PATH_PREFIX) and _write_missing_its_slash(request):
            message = (
                f"No such endpoint: {request.method} {request.path}. Send it to {request.path}/ "
                "(with the trailing slash); a redirect would turn the write into a GET."
            )
            return JsonResponse(api_error_payload(message, code="not_found"), status=404)
        response = self.get_response(request)
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


def _write_missing_its_slash(request) -> bool:
    """A write (not GET, HEAD or OPTIONS) to a path no URL matches until a slash is added: what APPEND_SLASH
    redirects, tested the way CommonMiddleware tests it."""
    path = request.path_info
    if request.method in ("GET", "HEAD", "OPTIONS") or path.endswith("/") or not settings.APPEND_SLASH:
        return False
    urlconf = getattr(request, "urlconf", None)
    return not is_valid_path(path, urlconf) and is_valid_path(f"{path}/", urlconf)
