"""``POST /v1/chat/completions`` is answered by its view without resolving the URL (``llmops.asgi.DIRECT_ROUTES``);
through the URLconf (Django's test client, any other method) the same view answers. It answers as the DRF endpoints
do: key first, OpenAI errors, the request id and Allow on every answer, the body read as DRF reads it. On the direct
route the body is validated while the caller's configuration is read: a key of a known tenant with the wrong secret
is still refused before its body is judged."""

import httpx
import pytest
from django.test import Client, RequestFactory
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.request import Request

from billing.models import UsageRecord
from core.cpu import OFFLOAD_MIN_CHARS
from llmops.asgi import GatewayASGIHandler
from llmops.gateway import views
from llmops.gateway.chat.completion import ValidatedBody
from llmops.gateway.parsers import OrjsonParser
from llmops.gateway.views import JsonAnswers, request_json
from tenants.keys import parse_key
from tenants.services import api_key_revoke

BODY = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'
LONG_CONTENT_TYPE = "application/json; charset=utf-8; x=" + "y" * 250


def with_model(setup) -> bytes:
    return BODY.replace(b"{", f'{{"model": "{setup.small.name}", '.encode(), 1)


def outcome(status: int, headers, body: dict) -> tuple:
    error = body.get("error") or {}
    return (
        status,
        error.get("code"),
        headers.get("x-llmops-request-id", "").startswith("req_"),
        headers.get("www-authenticate"),
        headers.get("allow"),
        "x-llmops-overhead-ms" in headers,
    )


ALLOW = "POST, OPTIONS"
# name → (body, headers beyond the key and JSON content type, the outcome expected)
CASES = {
    "answered": (None, {}, (200, None, True, None, ALLOW, True)),
    "malformed JSON": (b'{"model": "x", "messages": [', {}, (400, "invalid_json", True, None, ALLOW, True)),
    "empty body": (b"", {}, (400, "missing_required_parameter", True, None, ALLOW, True)),
    "content type too long": (
        None,
        {"content-type": LONG_CONTENT_TYPE},
        (415, "unsupported_media_type", True, None, ALLOW, True),
    ),
    "no key": (BODY, {"authorization": ""}, (401, "missing_api_key", True, 'Bearer realm="llmops"', ALLOW, False)),
    "wrong key": (
        BODY,
        {"authorization": "Bearer sk-llmops-nope_nope"},
        (401, "invalid_api_key", True, 'Bearer realm="llmops"', ALLOW, False),
    ),
    "wrong secret, malformed JSON": (
        b'{"model": "x", "messages": [',
        {"authorization": "wrong secret"},
        (401, "invalid_api_key", True, 'Bearer realm="llmops"', ALLOW, False),
    ),
    "wrong secret, no messages": (
        b'{"model": "x"}',
        {"authorization": "wrong secret"},
        (401, "invalid_api_key", True, 'Bearer realm="llmops"', ALLOW, False),
    ),
    "wrong secret, large malformed JSON": (
        b'{"model": "x", "messages": [' + b" " * OFFLOAD_MIN_CHARS,
        {"authorization": "wrong secret"},
        (401, "invalid_api_key", True, 'Bearer realm="llmops"', ALLOW, False),
    ),
    "large malformed JSON": (
        b'{"model": "x", "messages": [' + b" " * OFFLOAD_MIN_CHARS,
        {},
        (400, "invalid_json", True, None, ALLOW, True),
    ),
    "revoked since loaded, malformed JSON": (
        b'{"model": "x", "messages": [',
        {"authorization": "revoked"},
        (401, "invalid_api_key", True, 'Bearer realm="llmops"', ALLOW, False),
    ),
}


def wrong_secret(key: str) -> str:
    """The key's prefix, which names a tenant this process has loaded, with another secret."""
    parsed = parse_key(key)
    return f"Bearer {key.removesuffix(parsed.secret)}{'0' * len(parsed.secret)}"


@pytest.fixture
def no_url_resolution(monkeypatch):
    """The live gateway's POSTs must not reach Django's URL resolution."""

    async def refused(self, request):
        raise AssertionError(f"{request.method} {request.path} was resolved through the URLconf")

    monkeypatch.setattr(GatewayASGIHandler, "run_get_response", refused)


@pytest.mark.parametrize("name", CASES)
def test_the_direct_route_and_the_urlconf_answer_as_the_drf_endpoints_did(gateway, acme, no_url_resolution, name):
    content, extra, expected = CASES[name]
    content = with_model(acme) if content is None else content
    headers = {"authorization": f"Bearer {acme.key}", "content-type": "application/json", **extra}
    # A first request loads the tenant, so the live request's configuration read is started ahead of its view (for
    # a secret that matches the key as loaded) and a small body is validated while it is read.
    httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{}", headers={"authorization": f"Bearer {acme.key}"})
    if headers["authorization"] == "wrong secret":
        headers["authorization"] = wrong_secret(acme.key)
    if headers["authorization"] == "revoked":
        headers["authorization"] = f"Bearer {acme.key}"
        api_key_revoke(api_key=acme.api_key)
    headers = {header: value for header, value in headers.items() if value}

    live = httpx.post(f"{gateway.url}/v1/chat/completions", content=content, headers=headers, timeout=30)
    meta = {f"HTTP_{header.upper().replace('-', '_')}": value for header, value in headers.items()}
    resolved = Client().post("/v1/chat/completions", data=content, content_type=headers["content-type"], **meta)

    assert outcome(live.status_code, live.headers, live.json()) == expected
    assert outcome(resolved.status_code, resolved.headers, resolved.json()) == expected


def test_a_body_validated_while_the_configuration_is_read_is_refused_after_authentication_with_its_ledger_row(
    gateway, acme, monkeypatch
):
    validated = []

    class Recorded(ValidatedBody):
        @classmethod
        def of(cls, read_body):
            made = super().of(read_body)
            validated.append(made)
            return made

    monkeypatch.setattr(views, "ValidatedBody", Recorded)
    url, headers = f"{gateway.url}/v1/chat/completions", {"authorization": f"Bearer {acme.key}"}

    loading = httpx.post(url, content=with_model(acme), headers=headers)
    refused = httpx.post(url, content=b'{"model": "x", "messages": [', headers=headers)

    assert loading.status_code == 200
    assert outcome(refused.status_code, refused.headers, refused.json()) == (
        400,
        "invalid_json",
        True,
        None,
        ALLOW,
        True,
    )
    assert len(validated) == 1 and validated[0].error is not None  # the first loaded the tenant: read in the view
    records = UsageRecord.objects.unscoped().order_by("created_at", "id")
    assert [(record.http_status, record.error_code) for record in records] == [(200, ""), (400, "invalid_json")]


def test_other_methods_are_resolved_and_answered_by_the_same_view(gateway, acme):
    headers = {"authorization": f"Bearer {acme.key}"}
    url = f"{gateway.url}/v1/chat/completions"

    refused = httpx.get(url, headers=headers)
    described = httpx.options(url, headers=headers)
    unauthenticated = [httpx.get(url), httpx.options(url)]

    assert outcome(refused.status_code, refused.headers, refused.json()) == (
        405,
        "method_not_allowed",
        True,
        None,
        ALLOW,
        False,
    )
    assert described.status_code == 200 and described.headers["allow"] == ALLOW
    assert described.json() == {
        "name": "Chat Completions",
        "description": "",
        "renders": ["application/json"],
        "parses": ["*/*"],
    }
    # The key is checked before the method, as DRF did.
    for response in unauthenticated:
        assert outcome(response.status_code, response.headers, response.json()) == (
            401,
            "missing_api_key",
            True,
            'Bearer realm="llmops"',
            ALLOW,
            False,
        )


def drf_data(request):
    """What DRF's request.data gave the old endpoint, with the same parser and negotiation."""
    return Request(request, parsers=[OrjsonParser()], negotiator=JsonAnswers()).data


@pytest.mark.parametrize(
    ("content", "meta"),
    [
        (b'{"a": 1}', {"CONTENT_TYPE": "application/json"}),
        (b'{"a": 1}', {"CONTENT_TYPE": ""}),
        (b'{"a": 1}', {"CONTENT_TYPE": "text/plain"}),
        (b'{"a": 1}', {"CONTENT_LENGTH": "0"}),
        (b'{"a": 1}', {"CONTENT_LENGTH": None}),
        (b'{"a": 1}', {"CONTENT_LENGTH": "eight"}),
        (b"", {"CONTENT_TYPE": "application/json"}),
        (b"[1, 2]", {"CONTENT_TYPE": "application/json"}),
        (b'{"a": ', {"CONTENT_TYPE": "application/json"}),
        (b'{"a": 1}', {"CONTENT_TYPE": LONG_CONTENT_TYPE}),
        (b"", {"CONTENT_TYPE": LONG_CONTENT_TYPE}),
        (b'{"a": 1}', {"CONTENT_TYPE": "application/json;" + "x" * 239}),
        (b'{"a": 1}', {"CONTENT_TYPE": "application/json;" + "x" * 240}),
        (b'{"a": 1}', {"CONTENT_LENGTH": None, "HTTP_CONTENT_LENGTH": "8"}),
        (b'{"a": 1}', {"CONTENT_TYPE": None, "HTTP_CONTENT_TYPE": "application/json;" + "x" * 240}),
    ],
)
def test_the_body_is_read_as_drf_reads_it_for_the_other_endpoints(content, meta):
    def request():
        made = RequestFactory().generic("POST", "/v1/chat/completions", data=content)
        for name, value in meta.items():
            if value is None:
                made.META.pop(name, None)
            else:
                made.META[name] = value
        return made

    try:
        expected = drf_data(request())
    except (ParseError, UnsupportedMediaType) as refusal:
        with pytest.raises(type(refusal)):
            request_json(request())
    else:
        assert request_json(request()) == expected
