from django.urls import path, re_path

from llmops.gateway import views
from llmops.gateway.batches import views as batch_views
from llmops.gateway.embeddings.views import EmbeddingsView
from llmops.gateway.messages import views as message_views
from llmops.gateway.responses.views import (
    NO_COMPACTION,
    NO_INPUT_TOKEN_COUNT,
    NOT_STORED,
    ResponsesView,
    UnsupportedResponsesView,
)

app_name = "gateway"


def unsupported(reason: str, *methods: str):
    return UnsupportedResponsesView.as_view(reason=reason, http_method_names=[*methods, "options"])


urlpatterns = [
    path("chat/completions", views.chat_completions, name="chat-completions"),
    path("embeddings", EmbeddingsView.as_view(), name="embeddings"),
    path("responses", ResponsesView.as_view(), name="responses"),
    # OpenAI's other Responses endpoints answer `unsupported_endpoint` saying why; any other path under responses/
    # falls through to `unknown_url`. The two fixed names come before `<response_id>`, which would take them.
    path("responses/input_tokens", unsupported(NO_INPUT_TOKEN_COUNT, "post"), name="response-input-tokens"),
    path("responses/compact", unsupported(NO_COMPACTION, "post"), name="response-compact"),
    path("responses/<str:response_id>", unsupported(NOT_STORED, "get", "delete"), name="response-detail"),
    path("responses/<str:response_id>/cancel", unsupported(NOT_STORED, "post"), name="response-cancel"),
    path("responses/<str:response_id>/input_items", unsupported(NOT_STORED, "get"), name="response-input-items"),
    path("messages", message_views.MessagesView.as_view(), name="messages"),
    path("messages/count_tokens", message_views.MessageTokensView.as_view(), name="message-tokens"),
    path("models", views.ModelsView.as_view(), name="models"),
    path("models/<path:model_name>", views.ModelDetailView.as_view(), name="model-detail"),
    path("files", batch_views.FilesView.as_view(), name="files"),
    path("files/<str:file_id>", batch_views.FileDetailView.as_view(), name="file-detail"),
    path("files/<str:file_id>/content", batch_views.FileContentView.as_view(), name="file-content"),
    path("batches", batch_views.BatchesView.as_view(), name="batches"),
    path("batches/<str:batch_id>", batch_views.BatchDetailView.as_view(), name="batch-detail"),
    path("batches/<str:batch_id>/cancel", batch_views.BatchCancelView.as_view(), name="batch-cancel"),
    # Last: whatever no endpoint above serves answers OpenAI's JSON 404.
    re_path(r"", views.unknown_url, name="unknown-url"),
]
