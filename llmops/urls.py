from csp.decorators import csp
from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from llmops.gateway.views import healthz, readyz, unknown_url
from llmops.metrics import metrics_view
from llmops.schema_view import ApiSchemaView

# Swagger UI and Redoc need inline scripts and blob workers; every other page keeps CONTENT_SECURITY_POLICY.
api_docs_csp = csp(settings.LLMOPS_CSP_API_DOCS)

urlpatterns = [
    path("v1/", include("llmops.gateway.urls")),
    re_path(r"^v1$", unknown_url),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/", include("llmops.gateway.jobs.urls")),
    path("api/routing/", include("routing.urls")),
    path("api/", include("billing.urls")),
    path("api/schema/", ApiSchemaView.as_view(), name="schema"),
    path("api/schema/docs/", api_docs_csp(SpectacularSwaggerView.as_view(url_name="schema")), name="schema-docs"),
    path("api/schema/redoc/", api_docs_csp(SpectacularRedocView.as_view(url_name="schema")), name="schema-redoc"),
    path("admin/", admin.site.urls),
]

handler500 = "llmops.error_pages.server_error"
