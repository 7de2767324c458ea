from django.urls import path

from llmops.gateway import views

app_name = "gateway"

urlpatterns = [
    path("chat/completions", views.ChatCompletionsView.as_view(), name="chat-completions"),
    path("models", views.ModelsView.as_view(), name="models"),
    path("models/<path:model_name>", views.ModelDetailView.as_view(), name="model-detail"),
]
