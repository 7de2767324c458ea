"""ASGI entry point: ``uvicorn llmops.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")

django_application = get_asgi_application()


def _build_application():
    from django.conf import settings

    if settings.SERVE_STATIC:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        return ASGIStaticFilesHandler(django_application)
    return django_application


application = _build_application()
