import inspect
import time

import orjson
from adrf.views import APIView
from django.db import connection
from django.http import HttpResponse, JsonResponse
from rest_framework.permissions import IsAuthenticated

from llmops.gateway.call import GatewayCall
from llmops.gateway.chat import chat_completion_run
from llmops.gateway.errors import GatewayError, openai_exception_handler
from llmops.gateway.parsers import OrjsonParser
from llmops.gateway.snapshot import config_snapshot
from tenants.authentication import ApiKeyAuthentication


class SnapshotKeyAuthentication(ApiKeyAuthentication):
    def key_index(self):
        return config_snapshot.current.keys


class GatewayView(APIView):
    """Base of the /v1 endpoints: key auth against the in-memory snapshot, orjson, OpenAI-shaped errors."""

    authentication_classes = [SnapshotKeyAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [OrjsonParser]

    async def async_dispatch(self, request, *args, **kwargs):
        """adrf's dispatch, minus its hop to a worker thread for ``initial()``.

        Authentication, permissions and negotiation here read only the in-memory snapshot, so they
        run on the event loop; the one thing that may touch the database is the snapshot refresh,
        which is awaited first (off the loop).
        """
        await config_snapshot.ensure_fresh()
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            self.initial(request, *args, **kwargs)
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                self.http_method_not_allowed(request)
            response = handler(request, *args, **kwargs)
            if inspect.isawaitable(response):
                response = await response
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

    def get_exception_handler(self):
        return openai_exception_handler


class ChatCompletionsView(GatewayView):
    async def post(self, request):
        self.call = GatewayCall(principal=request.user, endpoint=request.path)
        return await chat_completion_run(self.call, read_body=lambda: request.data, headers=request.headers)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        call = getattr(self, "call", None)
        if call is not None and "x-llmops-request-id" not in response:
            for name, value in call.response_headers().items():
                response[name] = value
        return response


class ModelsView(GatewayView):
    async def get(self, request):
        catalog = config_snapshot.current.catalog
        created = int(time.time())
        data = [
            {"id": model.name, "object": "model", "created": created, "owned_by": model.provider.name}
            for model in catalog.models_for(request.user.tenant_id)
        ]
        return HttpResponse(orjson.dumps({"object": "list", "data": data}), content_type="application/json")


class ModelDetailView(GatewayView):
    async def get(self, request, model_name: str):
        catalog = config_snapshot.current.catalog
        for model in catalog.models_for(request.user.tenant_id):
            if model.name == model_name:
                body = {
                    "id": model.name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": model.provider.name,
                }
                return HttpResponse(orjson.dumps(body), content_type="application/json")
        raise GatewayError(
            f"The model `{model_name}` does not exist.", status=404, code="model_not_found", param="model"
        )


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return JsonResponse({"status": "unavailable", "database": exc.__class__.__name__}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})
