"""/api/schema/ (kept apart from llmops.api_schema, which DRF imports while drf-spectacular's views load)."""

import threading

from django.conf import settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SCHEMA_KWARGS, SpectacularAPIView
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer

# drf-spectacular builds the schema through module-level registries that are not thread-safe, and under ASGI each
# request to this sync view runs on a thread of its own: concurrent first requests to a worker answered 500.
_schema_generation = threading.Lock()


class ApiSchemaView(SpectacularAPIView):
    """drf-spectacular's schema view, refusing the query values its own schema does not allow (`format=`, an unknown
    `lang`) instead of ignoring them."""

    @extend_schema(**SCHEMA_KWARGS)
    def get(self, request, *args, **kwargs):
        allowed = {"format": ("json", "yaml"), "lang": tuple(dict(settings.LANGUAGES))}
        for name, values in allowed.items():
            if name in request.query_params and request.query_params[name] not in values:
                raise ValidationError({name: [f"Must be one of {', '.join(values)}."]})
        with _schema_generation:
            return super().get(request, *args, **kwargs)

    def handle_exception(self, exc):
        """Errors are JSON like the rest of /api/, not an OpenAPI document."""
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().handle_exception(exc)
