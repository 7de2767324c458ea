from django.contrib import admin
from django.urls import include, path

from llmops.gateway.views import healthz, readyz

urlpatterns = [
    path("v1/", include("llmops.gateway.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
]
