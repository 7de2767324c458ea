import inspect

import orjson
from adrf.views import APIView
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import MethodNotAllowed, UnsupportedMediaType
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import IsAuthenticated

from core.cpu import OFFLOAD_MIN_CHARS
from llmops.gateway.call import GatewayCall, new_request_id
from llmops.gateway.chat.completion import ValidatedBody, chat_completion_run, declared_size
from llmops.gateway.errors import (
    REQUEST_ID_HEADER,
    GatewayError,
    openai_error_response,
    openai_exception_handler,
    request_id_headers,
)
from llmops.gateway.last_resort import json_error_response
from llmops.gateway.parsers import OrjsonParser
from llmops.gateway.snapshot import ConfigSnapshot, StartedRead, config_snapshot
from tenants.authentication import ApiKeyAuthentication, bearer_key


class JsonAnswers(DefaultContentNegotiation):
    """/v1 answers JSON whatever the Accept header says, as OpenAI's API does; reading Accept was 2% of an exact
    cache hit's CPU. Request bodies are still parsed by their content type."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class GatewayView(APIView):
    """Base of the /v1 endpoints: key auth against the caller's tenant configuration, orjson, OpenAI-shaped errors."""

    permission_classes = [IsAuthenticated]
    parser_classes = [OrjsonParser]
    content_negotiation_class = JsonAnswers
    # The configuration of the tenant the caller's key belongs to, current as of this request.
    config: ConfigSnapshot | None = None

    async def async_dispatch(self, request, *args, **kwargs):
        """adrf's dispatch, minus its hop to a worker thread for ``initial()``.

        The caller's tenant configuration is made current first (one version read; a reload only when it
        changed), so authentication, permissions and negotiation read memory only and run on the event loop.
        A refresh that fails (Postgres or Redis unreachable) is answered by the error handler like any other failure.
        """
        self.request_id = new_request_id()
        raw_key = self.caller_key(request)
        refresh_failure = None
        try:
            self.config = await config_snapshot.for_key(raw_key) if raw_key else None
        except Exception as exc:
            refresh_failure = exc
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            if refresh_failure is not None:
                raise refresh_failure
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

    def caller_key(self, request) -> str | None:
        """The gateway key the request carries, for loading its tenant's configuration before authentication."""
        return bearer_key(request.META.get("HTTP_AUTHORIZATION", ""))

    def get_authenticators(self):
        return [ApiKeyAuthentication(self.config.keys if self.config is not None else {})]

    def get_exception_handler(self):
        return openai_exception_handler

    def finalize_response(self, request, response, *args, **kwargs):
        """Every answer names its request, refusals before any ledger row included."""
        response = super().finalize_response(request, response, *args, **kwargs)
        if REQUEST_ID_HEADER not in response:
            for name, value in request_id_headers(self.request_id).items():
                response[name] = value
        return response


class PipelineView(GatewayView):
    """Base of the endpoints whose requests go through the pipeline (``run_recorded``): a refusal carries the
    x-llmops-* headers of what the pipeline learnt before it, as an answer does."""

    call: GatewayCall | None = None

    def new_call(self, request) -> GatewayCall:
        self.call = GatewayCall(principal=request.user, endpoint=request.path, request_id=self.request_id)
        return self.call

    def finalize_response(self, request, response, *args, **kwargs):
        if self.call is not None and REQUEST_ID_HEADER not in response:
            for name, value in self.call.response_headers().items():
                response[name] = value
        return super().finalize_response(request, response, *args, **kwargs)


# As DRF's negotiation: a longer Content-Type selects no parser, and the request is refused.
MAX_CONTENT_TYPE_CHARS = 256


def request_json(request: HttpRequest):
    """The request's JSON body, read as DRF's ``request.data`` reads it for the other endpoints: a request that
    declares no body (no Content-Length, or 0) has none (``{}``); a Content-Type over 256 characters is a 415;
    otherwise OrjsonParser's limits and errors."""
    meta = request.META
    try:
        length = int(meta.get("CONTENT_LENGTH", meta.get("HTTP_CONTENT_LENGTH", 0)))
    except (ValueError, TypeError):
        length = 0
    if not length:
        return {}
    content_type = meta.get("CONTENT_TYPE", meta.get("HTTP_CONTENT_TYPE", ""))
    if len(content_type) > MAX_CONTENT_TYPE_CHARS:
        raise UnsupportedMediaType(content_type)
    return OrjsonParser().parse(request)


CHAT_COMPLETIONS_METHODS = "POST, OPTIONS"
# What an OPTIONS request to the endpoint is answered with: DRF's description of its endpoints.
CHAT_COMPLETIONS_METADATA = {
    "name": "Chat Completions",
    "description": "",
    "renders": ["application/json"],
    "parses": ["*/*"],
}


def chat_completions_start(scope: dict) -> StartedRead | None:
    """What ``llmops.asgi`` starts for ``chat_completions`` before it builds the request: the read of the caller's
    configuration versions (``ConfigCache.read_start``), whose round trip to Redis then overlaps building the request
    and validating its body. Nothing when the request carries other than one Authorization header."""
    authorizations = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(authorizations) != 1:
        return None
    # As Django decodes a header for request.META.
    raw_key = bearer_key(authorizations[0].decode("latin-1"))
    return config_snapshot.read_start(raw_key) if raw_key else None


@csrf_exempt
async def chat_completions(request: HttpRequest, started: StartedRead | None = None) -> HttpResponse:
    """``POST /v1/chat/completions``: what the DRF endpoints above do (key authentication against the caller's tenant
    configuration before anything else, OpenAI errors, the request id, the pipeline's headers and Allow on every
    answer, OPTIONS described) as a plain async view, without DRF's request, negotiation and dispatch around the
    hot path (about a tenth of a miss's CPU, measured in docs/performance.md). ``llmops.asgi`` also calls it without
    resolving the URL, with the configuration read it started (``chat_completions_start``)."""
    request_id = new_request_id()
    call = None
    try:
        raw_key = bearer_key(request.META.get("HTTP_AUTHORIZATION", ""))
        # While Redis answers the read started ahead, a small body is validated; what it finds wrong is answered
        # only after the key is authenticated, as before.
        validated = (
            ValidatedBody.of(lambda: request_json(request))
            if started is not None and request.method == "POST" and declared_size(request.headers) < OFFLOAD_MIN_CHARS
            else None
        )
        config = await config_snapshot.for_key(raw_key, started=started) if raw_key else None
        principal, _ = ApiKeyAuthentication(config.keys if config is not None else {}).authenticate(request)
        if request.method == "OPTIONS":
            response = HttpResponse(orjson.dumps(CHAT_COMPLETIONS_METADATA), content_type="application/json")
        elif request.method != "POST":
            raise MethodNotAllowed(request.method)
        else:
            call = GatewayCall(principal=principal, endpoint=request.path, request_id=request_id)
            response = await chat_completion_run(
                call,
                snapshot=config,
                read_body=lambda: request_json(request),
                headers=request.headers,
                limit_concurrency=True,
                validated=validated,
            )
    except Exception as exc:
        response = openai_error_response(exc, path=request.path)
    if call is not None and REQUEST_ID_HEADER not in response:
        for name, value in call.response_headers().items():
            response[name] = value
    if REQUEST_ID_HEADER not in response:
        for name, value in request_id_headers(request_id).items():
            response[name] = value
    response["Allow"] = CHAT_COMPLETIONS_METHODS
    return response


class ModelsView(GatewayView):
    async def get(self, request):
        catalog = self.config.catalog
        data = [
            {"id": model.name, "object": "model", "created": model.created, "owned_by": model.provider.name}
            for model in catalog.models_for(request.user.tenant_id)
        ]
        return HttpResponse(orjson.dumps({"object": "list", "data": data}), content_type="application/json")


class ModelDetailView(GatewayView):
    async def get(self, request, model_name: str):
        catalog = self.config.catalog
        for model in catalog.models_for(request.user.tenant_id):
            if model.name == model_name:
                body = {
                    "id": model.name,
                    "object": "model",
                    "created": model.created,
                    "owned_by": model.provider.name,
                }
                return HttpResponse(orjson.dumps(body), content_type="application/json")
        raise GatewayError(
            f"The model `{model_name}` does not exist.", status=404, code="model_not_found", param="model"
        )


MAX_ECHOED_PATH_CHARS = 200


@csrf_exempt
async def unknown_url(request, *args, **kwargs):
    """Any /v1 path no endpoint serves, whatever the method: OpenAI's 404 and message, before any key check."""
    path = request.path[:MAX_ECHOED_PATH_CHARS]
    error = GatewayError(
        f"Unknown request URL: {request.method} {path}. Please check the URL for typos; the /v1 endpoints are "
        "chat/completions, embeddings, responses, messages, messages/count_tokens, models, files and batches.",
        status=404,
        code="unknown_url",
    )
    return json_error_response(error)


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return JsonResponse({"status": "unavailable", "database": exc.__class__.__name__}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})
