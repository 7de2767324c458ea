"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API, so the anthropic SDK works
with its ``base_url`` set to the gateway.

A request is turned into a chat completion at the edge (``validation``), runs the one chat pipeline (key, routing,
caps, cache, rate limits, budgets, upstream, ledger) and its answer is turned back (``answers``); errors are
Anthropic-shaped (``errors``). The key is taken from ``x-api-key`` or ``Authorization: Bearer``.
"""

import orjson
from django.http import HttpResponse

from core.cpu import run_sized
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.admission import admit_uncharged
from llmops.gateway.chat.completion import chat_completion_run, declared_size
from llmops.gateway.chat.planning import prompt_tokens_counted, request_customer
from llmops.gateway.concurrency import inflight_release
from llmops.gateway.messages.answers import MessageStream, anthropic_message
from llmops.gateway.messages.errors import STATUSES_SHOWN, anthropic_exception_handler
from llmops.gateway.messages.validation import chat_request_from_message
from llmops.gateway.views import PipelineView
from tenants.authentication import AnthropicKeyAuthentication, anthropic_key

# Where the anthropic SDK looks for a request's id (its exceptions' ``request_id``).
ANTHROPIC_REQUEST_ID_HEADER = "request-id"


class MessagesView(PipelineView):
    def caller_key(self, request) -> str | None:
        return anthropic_key(request.META)

    def get_authenticators(self):
        return [AnthropicKeyAuthentication(self.config.keys if self.config is not None else {})]

    def get_exception_handler(self):
        return anthropic_exception_handler

    async def post(self, request):
        call = self.new_call(request)
        call.statuses_shown = STATUSES_SHOWN
        response = await chat_completion_run(
            call,
            snapshot=self.config,
            read_body=lambda: chat_request_from_message(request.data),
            headers=request.headers,
            limit_concurrency=True,
        )
        stop_sequences = (call.request_body or {}).get("stop") or []
        if response.streaming:
            stream = MessageStream(call, stop_sequences=stop_sequences)
            response.streaming_content = stream.events(response.streaming_content)
        else:
            answer = orjson.loads(response.content)
            response.content = orjson.dumps(anthropic_message(call, answer, stop_sequences=stop_sequences))
        return response

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response[ANTHROPIC_REQUEST_ID_HEADER] = self.request_id
        return response


class MessageTokensView(MessagesView):
    """The prompt's tokens as the pipeline counts them (``prompt_tokens_counted``). Free, and not in the ledger, but
    a request like any other to the request rate limits of its key, team and end customer and its tenant's cap on
    requests in flight, all taken before the prompt is counted; a prompt a cap refuses by its length alone is refused
    uncounted."""

    async def post(self, request):
        body = await run_sized(
            declared_size(request.headers), lambda: chat_request_from_message(request.data, counting=True)
        )
        call = GatewayCall(principal=request.user, endpoint=request.path, request_id=self.request_id)
        call.customer = request_customer(request.headers, body.get("user"))
        try:
            await admit_uncharged(self.config, call)
            tokens = await prompt_tokens_counted(self.config, request.user, body, request.headers)
        finally:
            if call.inflight is not None:
                inflight_release(call.inflight)
        response = HttpResponse(orjson.dumps({"input_tokens": tokens}), content_type="application/json")
        for name, value in call.extra_headers.items():
            response[name] = value
        return response
