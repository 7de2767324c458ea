from llmops.gateway.errors import GatewayError
from llmops.gateway.responses.pipeline import responses_run
from llmops.gateway.views import MAX_ECHOED_PATH_CHARS, GatewayView, PipelineView


class ResponsesView(PipelineView):
    async def post(self, request):
        return await responses_run(
            self.new_call(request),
            snapshot=self.config,
            read_body=lambda: request.data,
            headers=request.headers,
            limit_concurrency=True,
        )


# Why each Responses endpoint the gateway does not offer answers `unsupported_endpoint` (llmops.gateway.urls).
NOT_STORED = (
    "responses are not stored (`store` is always false), so none can be retrieved, listed, cancelled or deleted."
)
NO_INPUT_TOKEN_COUNT = (
    "the gateway does not count the input tokens of a Responses request. It counts those of an Anthropic Messages "
    "request at POST /v1/messages/count_tokens."
)
NO_COMPACTION = (
    "compaction is not supported. Send the conversation in `input` as it is; routing rules can cap or compress a "
    "long prompt."
)


class UnsupportedResponsesView(GatewayView):
    """An OpenAI Responses endpoint this gateway does not offer: a 400 with ``reason``, for the methods the route
    passes in ``http_method_names`` (another method is a 405, as on every /v1 endpoint)."""

    reason = ""

    def _unsupported(self, request):
        path = request.path[:MAX_ECHOED_PATH_CHARS]
        raise GatewayError(
            f"{request.method} {path} is not supported by this gateway: {self.reason}",
            status=400,
            code="unsupported_endpoint",
        )

    async def get(self, request, **kwargs):
        self._unsupported(request)

    async def post(self, request, **kwargs):
        self._unsupported(request)

    async def delete(self, request, **kwargs):
        self._unsupported(request)
