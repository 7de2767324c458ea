from django.urls import path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from billing.api_usage import (
    UsageExportCreateView,
    UsageExportCsvView,
    UsageExportDownloadView,
    UsageExportStatusView,
    UsageView,
)
from llmops.metrics import metrics_view
from llmops.schema_view import ApiSchemaView

urlpatterns = [
    path("api/usage/", UsageView.as_view(), name="usage"),
    path("api/usage/export.csv", UsageExportCsvView.as_view(), name="usage-export-csv"),
    path("api/usage/exports/", UsageExportCreateView.as_view(), name="usage-export-create"),
    path("api/usage/exports/<int:export_id>/", UsageExportStatusView.as_view(), name="usage-export-status"),
    path("api/usage/exports/<int:export_id>/download", UsageExportDownloadView.as_view(), name="usage-export-download"),
    path("api/schema/", ApiSchemaView.as_view(), name="schema"),
    path("api/schema/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-docs"),
    path("api/schema/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="schema-redoc"),
    path("metrics", metrics_view, name="metrics"),
]
