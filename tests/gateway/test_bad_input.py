"""Bad input gets a clear OpenAI-shaped error and leaves nothing behind but its ledger row."""

from datetime import timedelta
from decimal import Decimal

import httpx
import orjson
import pytest
from django.utils import timezone

from billing.models import UsageRecord
from tenants.models import PayloadLog
from tenants.services import api_key_revoke, payload_log_settings_set


def post(gateway, key, body=None, *, content=None, headers=None):
    authorization = b"Bearer " + key if isinstance(key, bytes) else f"Bearer {key}"
    request_headers = {"authorization": authorization, "content-type": "application/json", **(headers or {})}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, content=content, headers=request_headers)


def assert_openai_error(response, status, code, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["message"]
    assert response.headers["x-llmops-request-id"].startswith("req_")
    return error


def test_malformed_json_is_a_400_with_a_ledger_row(gateway, acme):
    response = post(gateway, acme.key, content=b'{"model": "x", "messages": [')

    assert_openai_error(response, 400, "invalid_json")
    record = UsageRecord.objects.unscoped().get()
    assert (record.http_status, record.error_code, record.tenant) == (400, "invalid_json", acme.tenant)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "missing_required_parameter", "model"),
        ({"model": 42, "messages": [{"role": "user", "content": "hi"}]}, "invalid_type", "model"),
        ({"model": "m", "messages": "hi"}, "invalid_type", "messages"),
        ({"model": "m", "messages": []}, "empty_array", "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "invalid_value", "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}]}, "missing_required_parameter", "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
            "invalid_value",
            "max_tokens",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"},
            "invalid_type",
            "max_tokens",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
            "invalid_value",
            "temperature",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "invalid_type", "stream"),
        ([1, 2, 3], "invalid_json", None),
        ({"model": "m", "messages": [{"role": ["user"], "content": "hi"}]}, "invalid_type", "messages[0].role"),
        ({"model": "m", "messages": [{"role": {"a": "user"}, "content": "hi"}]}, "invalid_type", "messages[0].role"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "a", "name": {}}],
            },
            "invalid_type",
            "messages[1].name",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]},
            "invalid_type",
            "messages[0].content[0].text",
        ),
    ],
)
def test_wrong_fields_name_the_parameter(gateway, acme, body, code, param):
    response = post(gateway, acme.key, body)

    assert_openai_error(response, 400, code, param)
    assert UsageRecord.objects.unscoped().get().error_code == code


def test_oversized_body_is_refused(gateway, acme, settings):
    settings.LLMOPS_MAX_BODY_BYTES = 2_000
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "x" * 5_000}]}

    response = post(gateway, acme.key, body)

    assert_openai_error(response, 413, "request_too_large")
    assert UsageRecord.objects.unscoped().get().error_code == "request_too_large"


def chunked(body: dict):
    """The body as httpx sends an iterator: Transfer-Encoding chunked, no Content-Length."""
    data = orjson.dumps(body)
    yield from (data[:10], data[10:])


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 200),
        ("/v1/responses", {"input": "hi"}, 200),
        ("/api/jobs", {"messages": [{"role": "user", "content": "hi"}]}, 202),
    ],
)
def test_a_chunked_body_is_read_as_one_with_a_length(gateway, acme, path, body, status):
    """Django and DRF read a body only as long as its Content-Length says: a chunked one was read as none, and its
    fields reported missing."""
    headers = {"authorization": f"Bearer {acme.key}", "content-type": "application/json"}

    response = httpx.post(f"{gateway.url}{path}", content=chunked({"model": acme.small.name, **body}), headers=headers)

    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == status, response.text


def test_a_chunked_body_over_the_limit_is_refused(gateway, acme, settings):
    settings.LLMOPS_MAX_BODY_BYTES = 2_000
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "x" * 5_000}]}
    headers = {"authorization": f"Bearer {acme.key}", "content-type": "application/json"}

    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=chunked(body), headers=headers)

    assert_openai_error(response, 413, "request_too_large")


def test_missing_key_is_a_401(gateway, acme):
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "m", "messages": []})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    assert not UsageRecord.objects.unscoped().exists()


@pytest.mark.parametrize(
    "key",
    [
        "sk-not-ours",
        "llmops-abcdefabcdef-wrongsecret",
        "llmops-short-x",
        "Bearer",
        "llmops-\u00e9\u00e9-\u2603".encode(),
    ],
)
def test_unknown_keys_are_401_and_leave_nothing(gateway, acme, key):
    response = post(gateway, key, {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert not UsageRecord.objects.unscoped().exists()


def test_a_right_prefix_with_a_wrong_secret_is_refused(gateway, acme):
    forged = acme.key[: acme.key.rindex("-") + 1] + "A" * 40

    response = post(gateway, forged, {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]})

    assert response.status_code == 401


def test_revoked_key_is_refused(gateway, acme):
    api_key_revoke(api_key=acme.api_key)

    response = post(gateway, acme.key, {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]})

    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]
    assert not UsageRecord.objects.unscoped().exists()


def test_expired_key_is_refused(gateway, acme):
    acme.api_key.expires_at = timezone.now() - timedelta(seconds=1)
    acme.api_key.save()

    response = post(gateway, acme.key, {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]})

    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_key_of_another_tenant_cannot_use_its_models(gateway, acme, globex):
    response = post(gateway, globex.key, {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]})

    assert_openai_error(response, 403, "model_not_allowed", "model")
    record = UsageRecord.objects.unscoped().get()
    assert record.tenant == globex.tenant and record.served_model == ""
    models = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {globex.key}"}).json()
    assert {m["id"] for m in models["data"]} == {globex.small.name, globex.large.name}
    detail = httpx.get(f"{gateway.url}/v1/models/{acme.small.name}", headers={"authorization": f"Bearer {globex.key}"})
    assert detail.status_code == 404


def test_wrong_method_is_an_openai_error(gateway, acme):
    headers = {"authorization": f"Bearer {acme.key}"}
    for method, path in [("GET", "/v1/chat/completions"), ("PUT", "/v1/models"), ("DELETE", "/v1/batches")]:
        response = httpx.request(method, f"{gateway.url}{path}", headers=headers)

        assert_openai_error(response, 405, "method_not_allowed")
    assert not UsageRecord.objects.unscoped().exists()


UNKNOWN_URLS = [
    ("POST", "/v1/foo"),
    ("POST", "/v1/chat/completion"),
    ("GET", "/v1/embedding"),
    ("DELETE", "/v1/"),
    ("POST", "/v1"),
    ("PUT", "/v1/files/a/b/c"),
    ("GET", "/v1/%00"),
]


def test_unknown_v1_urls_answer_openai_json(gateway, acme):
    for headers in ({"authorization": f"Bearer {acme.key}"}, {}):
        for method, path in UNKNOWN_URLS:
            response = httpx.request(method, f"{gateway.url}{path}", headers=headers)

            error = assert_openai_error(response, 404, "unknown_url")
            assert error["type"] == "invalid_request_error"
            assert error["message"].startswith(f"Unknown request URL: {method} {path.replace('%00', chr(0))}")
            assert response.headers["content-type"] == "application/json"
    assert not UsageRecord.objects.unscoped().exists()


def test_every_v1_answer_names_a_request_id(gateway, acme):
    headers = {"authorization": f"Bearer {acme.key}"}

    answers = [
        httpx.get(f"{gateway.url}/v1/models", headers=headers),
        httpx.get(f"{gateway.url}/v1/models", headers={"authorization": "Bearer nope"}),
        httpx.get(f"{gateway.url}/v1/files", headers=headers),
        httpx.get(f"{gateway.url}/v1/batches/batch_missing", headers=headers),
    ]

    assert [answer.status_code for answer in answers] == [200, 401, 200, 404]
    request_ids = {answer.headers["x-llmops-request-id"] for answer in answers}
    assert len(request_ids) == 4 and all(request_id.startswith("req_") for request_id in request_ids)


def test_no_error_costs_money(gateway, acme):
    post(gateway, acme.key, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    post(gateway, acme.key, content=b"not json")

    assert UsageRecord.objects.unscoped().count() == 2
    assert all(record.cost_usd == Decimal(0) for record in UsageRecord.objects.unscoped().all())


def test_a_nul_character_in_a_logged_prompt_is_answered_and_logged(gateway, acme):
    payload_log_settings_set(tenant=acme.tenant, enabled=True)
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "before\x00after"}]}

    response = post(gateway, acme.key, body)

    assert response.status_code == 200, response.text
    assert UsageRecord.objects.unscoped().get().http_status == 200
    assert PayloadLog.objects.unscoped().get().request["messages"][0]["content"] == "before\ufffdafter"
