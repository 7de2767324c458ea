from llmops.gateway.embeddings.pipeline import embeddings_run
from llmops.gateway.views import PipelineView


class EmbeddingsView(PipelineView):
    async def post(self, request):
        return await embeddings_run(
            self.new_call(request),
            snapshot=self.config,
            read_body=lambda: request.data,
            headers=request.headers,
            limit_concurrency=True,
        )
