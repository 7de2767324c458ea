"""/api/schema/ (kept apart from llmops.api_schema, which DRF imports while drf-spectacular's views load)."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SCHEMA_KWARGS, SpectacularAPIView
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer


class ApiSchemaView(SpectacularAPIView):
    """drf-spectacular's schema view, refusing the query values its own schema does not allow (`format=`, an unknown
    `lang`) instead of ignoring them."""

    @extend_schema(**SCHEMA_KWARGS)
    def get(self, request, *args, **kwargs):
        allowed = {"format": ("json", "yaml"), "lang": tuple(dict(settings.LANGUAGES))}
        for name, values in allowed.items():
            if name in request.query_params and request.query_params[name] not in values:
                raise ValidationError({name: [f"Must be one of {', '.join(values)}."]})
        return super().get(request, *args, **kwargs)

    def handle_exception(self, exc):
        """Errors are JSON like the rest of /api/, not an OpenAPI document."""
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().handle_exception(exc)
