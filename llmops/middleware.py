"""Middleware for the browser-facing site (admin, management API, dashboard); /v1 runs without it."""

from django.conf import settings

from tenants.audit import audit_actor


class AuditActorMiddleware:
    """Attributes configuration changes made while handling a request to the signed-in user."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with audit_actor(user=request.user):
            return self.get_response(request)


class SecurityHeadersMiddleware:
    """Content-Security-Policy and Permissions-Policy on every answer that has not set its own.

    The API docs (Swagger UI, Redoc) boot from inline scripts and workers, so their pages get a looser policy.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        loose = any(request.path.startswith(prefix) for prefix in settings.LLMOPS_CSP_DOCS_PATHS)
        policy = settings.LLMOPS_CSP_DOCS if loose else settings.LLMOPS_CSP
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("Permissions-Policy", settings.LLMOPS_PERMISSIONS_POLICY)
        return response
