import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser


class OrjsonParser(BaseParser):
    """JSON with orjson, refusing bodies over LLMOPS_MAX_BODY_BYTES (Django only checks ``request.body``)."""

    # Any content type is read as JSON, as OpenAI does, so a bare curl call gets a JSON error, not a 415.
    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.LLMOPS_MAX_BODY_BYTES
        content = stream.read(limit + 1) if stream is not None else b""
        if len(content) > limit:
            raise RequestDataTooBig(f"body over {limit} bytes")
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ParseError(str(exc)) from exc
