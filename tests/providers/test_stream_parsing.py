"""Provider streams read as the SSE specification says (httpx-sse): what a valid stream may hold reaches the client
whole, and an answer that is not an event stream is the provider's failure."""

import orjson
import pytest

from routing import upstream
from routing.providers import openai
from tests.loops import run
from tests.providers.conftest import chunks_of, collect_stream, provider_entry, streamed_text
from tests.providers.test_transport import BODY, RawServer, head

# Characters str.splitlines() breaks on although SSE does not, as JSON producers leave them in a string unescaped.
UNUSUAL_BREAKS = "line\u2028separator, paragraph\u2029separator, next\x85line"


def chunk(content: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}}],
    }


def streaming(events: list[bytes], *, content_type: str = "text/event-stream"):
    async def respond(writer) -> bool:
        writer.write(head(200, {"content-type": content_type, "transfer-encoding": "chunked"}))
        for event in events:
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    return respond


def read_openai_stream(respond) -> list[str]:
    async def scenario():
        async with RawServer(respond) as url:
            return await collect_stream(await openai.open_chat_stream(provider_entry("openai", url), BODY))

    return run(scenario())


@pytest.mark.parametrize("field", [b"data: ", b"data:"])
def test_an_openai_stream_keeps_unusual_line_breaks_inside_an_answer_and_reads_data_without_a_space(field):
    events = [field + orjson.dumps(chunk(UNUSUAL_BREAKS)) + b"\n\n", b": keep-alive\n\n", field + b"[DONE]\n\n"]

    chunks = chunks_of(read_openai_stream(streaming(events)))

    assert streamed_text(chunks) == UNUSUAL_BREAKS


def test_an_anthropic_stream_keeps_unusual_line_breaks_inside_an_answer(anthropic_provider):
    body = {"model": "claude-test", "messages": [{"role": "user", "content": UNUSUAL_BREAKS}], "stream": True}

    async def scenario():
        return await collect_stream(await upstream.open_chat_stream(anthropic_provider, body))

    assert streamed_text(chunks_of(run(scenario()))) == "Echo: " + UNUSUAL_BREAKS


def test_a_stream_request_answered_with_a_json_body_is_an_invalid_response():
    body = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})

    with pytest.raises(upstream.UpstreamInvalidResponse, match="not text/event-stream"):
        read_openai_stream(streaming([body], content_type="application/json"))


def test_an_openai_event_sent_on_several_data_lines_is_passed_on_as_one():
    """SSE joins an event's data lines with line feeds; passed on as it came, the lines after the first would reach the
    client without their ``data:`` field, a stream its SDK cannot read."""
    lines = orjson.dumps(chunk("Hello"), option=orjson.OPT_INDENT_2).split(b"\n")
    events = [b"".join(b"data: " + line + b"\n" for line in lines) + b"\n", b"data: [DONE]\n\n"]

    read = read_openai_stream(streaming(events))

    assert all("\n" not in event for event in read)
    assert chunks_of(read) == [chunk("Hello")]


def test_an_openai_event_on_several_data_lines_that_is_not_json_is_an_invalid_response():
    events = [b'data: {"choices":\ndata: [\n\n', b"data: [DONE]\n\n"]

    with pytest.raises(upstream.UpstreamInvalidResponse, match="not JSON"):
        read_openai_stream(streaming(events))
