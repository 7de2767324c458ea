"""``POST /v1/chat/completions`` is answered by its view without resolving the URL (``llmops.asgi.DIRECT_VIEWS``);
through the URLconf (Django's test client, any other method) the same view answers the same way."""

import httpx
import pytest
from django.test import Client, RequestFactory

from billing.models import UsageRecord
from llmops import asgi
from llmops.gateway.views import request_json

BODY = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'
# (name, body, headers beyond the key): each answered the same through either route.
CASES = [
    ("answered", None, {}),
    ("malformed JSON", b'{"model": "x", "messages": [', {}),
    ("empty body", b"", {}),
    ("no key", BODY, {"authorization": ""}),
    ("wrong key", BODY, {"authorization": "Bearer sk-llmops-nope_nope"}),
]


def outcome(status: int, headers, body: dict) -> tuple:
    error = body.get("error") or {}
    return (
        status,
        error.get("code"),
        headers.get("x-llmops-request-id", "").startswith("req_"),
        headers.get("www-authenticate"),
        headers.get("x-llmops-model"),
    )


@pytest.mark.parametrize(("name", "content", "extra"), CASES, ids=[name for name, *_ in CASES])
def test_the_direct_route_and_the_urlconf_answer_alike(gateway, acme, name, content, extra):
    content = content if content is not None else BODY.replace(b"{", f'{{"model": "{acme.small.name}", '.encode(), 1)
    headers = {"authorization": f"Bearer {acme.key}", "content-type": "application/json", **extra}
    headers = {name: value for name, value in headers.items() if value}

    live = httpx.post(f"{gateway.url}/v1/chat/completions", content=content, headers=headers, timeout=30)
    meta = {
        f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items() if name != "content-type"
    }
    resolved = Client().post("/v1/chat/completions", data=content, content_type=headers.get("content-type", ""), **meta)

    assert outcome(live.status_code, live.headers, live.json()) == outcome(
        resolved.status_code, resolved.headers, resolved.json()
    )


def test_only_a_post_skips_the_url_resolution(gateway, acme):
    assert list(asgi.DIRECT_VIEWS) == [("POST", "/v1/chat/completions")]
    response = httpx.get(f"{gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {acme.key}"})

    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["x-llmops-request-id"].startswith("req_")
    assert not UsageRecord.objects.unscoped().exists()


@pytest.mark.parametrize(
    ("content", "length", "expected"),
    [(b'{"a": 1}', "8", {"a": 1}), (b'{"a": 1}', "0", {}), (b'{"a": 1}', None, {}), (b"", "0", {})],
)
def test_the_body_is_read_as_drf_reads_it_for_the_other_endpoints(content, length, expected):
    """A request that declares no body has none (DRF's ``request.data`` is ``{}`` for it), whatever it sends."""
    request = RequestFactory().generic("POST", "/v1/chat/completions", data=content)
    if length is None:
        del request.META["CONTENT_LENGTH"]
    else:
        request.META["CONTENT_LENGTH"] = length

    assert request_json(request) == expected
