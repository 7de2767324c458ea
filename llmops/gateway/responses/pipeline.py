"""One Responses API request: validated, made the chat completion it asks for, run through the chat pipeline
(``chat_completion_run``: routing, caps, cache, budgets and rate limits, the call, the ledger), and its answer presented
as a Response, or as the Responses stream's events."""

from collections.abc import Callable, Mapping

import orjson
from django.http import HttpResponse, StreamingHttpResponse

from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.completion import chat_completion_run
from llmops.gateway.errors import GatewayError
from llmops.gateway.responses.presentation import ResponseIdentity, ResponseStream, response_from_chat
from llmops.gateway.responses.validation import chat_body, validate_responses_request
from llmops.gateway.snapshot import ConfigSnapshot

# The parameter of the Responses request that a chat parameter named in an error came from.
RESPONSES_PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "verbosity": "text.verbosity",
    "reasoning_effort": "reasoning.effort",
}
BUDGET_EXCEEDED = "budget_exceeded"


def _responses_param(param: str | None) -> str | None:
    if param is None:
        return None
    head = param.split(".", 1)[0].split("[", 1)[0]
    return RESPONSES_PARAMS.get(head, param)


def _in_responses_terms(error: GatewayError) -> GatewayError:
    """The chat pipeline's error naming the Responses request's parameters (a budget's advice included)."""
    message = error.message
    if error.code == BUDGET_EXCEEDED:
        message = message.replace("max_tokens", "max_output_tokens")
    return GatewayError(
        message,
        status=error.status_code,
        code=error.code,
        param=_responses_param(error.param),
        error_type=error.error_type,
        headers=error.headers,
    )


async def responses_run(
    call: GatewayCall,
    *,
    snapshot: ConfigSnapshot,
    read_body: Callable[[], object],
    headers: Mapping[str, str],
    limit_concurrency: bool = False,
) -> HttpResponse:
    request: dict = {}

    def chat_request() -> dict:
        request.update(validate_responses_request(read_body()))
        return chat_body(request)

    try:
        answer = await chat_completion_run(
            call, snapshot=snapshot, read_body=chat_request, headers=headers, limit_concurrency=limit_concurrency
        )
    except GatewayError as error:
        raise _in_responses_terms(error) from error
    identity = ResponseIdentity.of(request_id=call.request_id, created_at=int(call.created_at.timestamp()))
    if isinstance(answer, StreamingHttpResponse):
        model = call.served.upstream_name if call.served is not None else request["model"]
        answer.streaming_content = ResponseStream(request, identity, model=model).events(answer.streaming_content)
        return answer
    presented = response_from_chat(request, identity, orjson.loads(answer.content))
    response = HttpResponse(orjson.dumps(presented), content_type="application/json")
    for name, value in answer.items():
        if name.lower() not in ("content-type", "content-length"):
            response[name] = value
    return response
