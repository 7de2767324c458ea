"""ASGI entry point: ``uvicorn llmops.asgi:application``.

Requests under /v1/ go to a Django handler without the middleware stack. The /v1 API is for
bearer keys, not browsers, so it needs no session, CSRF, auth or message middleware, and each
of those would hop to a worker thread on every request (they are sync-first in Django).
Everything else (admin, /api, health) gets the full stack.
"""

import os
import threading

from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")

site_application = get_asgi_application()

GATEWAY_PATH_PREFIX = "/v1/"


class GatewayASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        """Django's handler minus its per-request ``ThreadSensitiveContext``: that context gives each request a
        thread of its own for thread-sensitive sync calls (signals, ``response.close``) and starts another to
        join it, two thread starts per request. Without it those few short calls share asgiref's one thread."""
        await self.handle(scope, receive, send)

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)


def _build_site_application():
    from django.conf import settings

    if settings.SERVE_STATIC:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        return ASGIStaticFilesHandler(site_application)
    return site_application


gateway_application = GatewayASGIHandler()


def _load_embedder_in_background() -> None:
    """Load the semantic cache's model when the server starts, not on the first cacheable request."""
    from routing.cache.embedders import configured_embedder

    threading.Thread(target=configured_embedder, name="embedder-load", daemon=True).start()


_load_embedder_in_background()
site_with_static = _build_site_application()


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith(GATEWAY_PATH_PREFIX):
        await gateway_application(scope, receive, send)
    else:
        await site_with_static(scope, receive, send)
