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


class ResponseDetailView(GatewayView):
    """Retrieve, delete, cancel, list input items: a response is never stored, so there is nothing to act on."""

    @staticmethod
    def _unsupported(request):
        path = request.path[:MAX_ECHOED_PATH_CHARS]
        raise GatewayError(
            f"{request.method} {path} is not supported by this gateway: responses are not stored (`store` is "
            "always false), so none can be retrieved, listed, cancelled or deleted.",
            status=400,
            code="unsupported_endpoint",
        )

    async def get(self, request, response_id: str):
        self._unsupported(request)

    async def post(self, request, response_id: str):
        self._unsupported(request)

    async def delete(self, request, response_id: str):
        self._unsupported(request)
