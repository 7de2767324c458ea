"""llmops.asgi gives a chunked request the Content-Length of the body it has read (the live cases are in
tests/gateway/test_bad_input.py; uvicorn's httptools refuses a request with both headers, other servers pass it)."""

import io

from llmops.asgi import _with_content_length


def test_a_chunked_body_gets_its_own_length_in_place_of_the_one_sent_beside_it():
    scope = {"headers": [(b"transfer-encoding", b"chunked"), (b"content-length", b"0"), (b"host", b"x")]}
    body = io.BytesIO(b"hello")
    body.seek(0)

    headers = _with_content_length(scope, body)["headers"]

    assert [value for name, value in headers if name == b"content-length"] == [b"5"]
    assert (b"host", b"x") in headers and body.read() == b"hello"


def test_a_request_that_is_not_chunked_is_left_as_it_came():
    scope = {"headers": [(b"content-length", b"5")]}

    assert _with_content_length(scope, io.BytesIO(b"hello")) is scope
