"""billing's management API, included under /api/ by llmops/urls.py."""

from django.urls import path

from billing.api import BudgetDetailView, BudgetListView

urlpatterns = [
    path("budgets/", BudgetListView.as_view(), name="budget-list"),
    path("budgets/<int:budget_id>/", BudgetDetailView.as_view(), name="budget-detail"),
]
