from django.contrib import admin
from django.urls import include, path, re_path

from llmops.gateway.views import healthz, readyz, unknown_url

urlpatterns = [
    path("v1/", include("llmops.gateway.urls")),
    re_path(r"^v1$", unknown_url),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("api/", include("llmops.gateway.jobs_urls")),
    path("api/routing/", include("routing.urls")),
    path("", include("billing.urls_usage")),
    path("api/", include("billing.urls")),
    path("admin/", admin.site.urls),
]

handler500 = "llmops.error_pages.server_error"
