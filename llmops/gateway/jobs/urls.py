from django.urls import path

from llmops.gateway.jobs import views

app_name = "jobs"

urlpatterns = [
    path("jobs", views.JobsView.as_view(), name="jobs"),
    path("jobs/webhook-secret", views.JobWebhookSecretView.as_view(), name="webhook-secret"),
    path("jobs/<str:job_id>", views.JobDetailView.as_view(), name="job-detail"),
]
