"""billing's management API, included under /api/ by llmops/urls.py."""

from django.urls import path

from billing.budgets.api import BudgetDetailView, BudgetListView
from billing.finance.api import (
    CustomerStatementCsvView,
    UsageExportCreateView,
    UsageExportCsvView,
    UsageExportDownloadView,
    UsageExportStatusView,
    UsageView,
)

urlpatterns = [
    path("budgets/", BudgetListView.as_view(), name="budget-list"),
    path("budgets/<int:budget_id>/", BudgetDetailView.as_view(), name="budget-detail"),
    path("usage/", UsageView.as_view(), name="usage"),
    path("usage/export.csv", UsageExportCsvView.as_view(), name="usage-export-csv"),
    path("usage/customer-statement.csv", CustomerStatementCsvView.as_view(), name="usage-customer-statement"),
    path("usage/exports/", UsageExportCreateView.as_view(), name="usage-export-create"),
    path("usage/exports/<int:export_id>/", UsageExportStatusView.as_view(), name="usage-export-status"),
    path("usage/exports/<int:export_id>/download", UsageExportDownloadView.as_view(), name="usage-export-download"),
]
