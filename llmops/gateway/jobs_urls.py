from django.urls import path

from llmops.gateway import jobs_views

app_name = "jobs"

urlpatterns = [
    path("jobs", jobs_views.JobsView.as_view(), name="jobs"),
    path("jobs/webhook-secret", jobs_views.JobWebhookSecretView.as_view(), name="webhook-secret"),
    path("jobs/<str:job_id>", jobs_views.JobDetailView.as_view(), name="job-detail"),
]
