import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from llmops.gateway.errors import invalid_request


def json_depth_exceeds(value, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` (iterative: a hostile body cannot exhaust the stack)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class OrjsonParser(BaseParser):
    """JSON with orjson, refusing bodies over LLMOPS_MAX_BODY_BYTES (Django only checks ``request.body``)
    and nesting deeper than LLMOPS_MAX_JSON_DEPTH."""

    # Any content type is read as JSON, as OpenAI does, so a bare curl call gets a JSON error, not a 415.
    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.LLMOPS_MAX_BODY_BYTES
        content = stream.read(limit + 1) if stream is not None else b""
        if len(content) > limit:
            raise RequestDataTooBig(f"body over {limit} bytes")
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ParseError(str(exc)) from exc
        max_depth = settings.LLMOPS_MAX_JSON_DEPTH
        if isinstance(data, dict | list) and json_depth_exceeds(data, max_depth):
            raise invalid_request(
                f"The JSON body nests arrays and objects deeper than {max_depth} levels.", code="json_too_deep"
            )
        return data
