"""The management API (/api/) answers every input, however hostile, with JSON in its documented shape, never a 500.

The cases are the ones a hostile-input review found answering 500 (or HTML); tests/security/test_hostile_input.py
fuzzes every operation of the schema besides.
"""

import base64
import json

import pytest
from django.test import Client

from routing.services import routing_policy_create_default
from tests.factories import TenantFactory, UserFactory
from tests.routing.conftest import make_routing_tenant

pytestmark = pytest.mark.django_db

RANGE = {"since": "2025-03-01", "until": "2025-03-31"}


@pytest.fixture
def tenant():
    return TenantFactory(slug="acme")


@pytest.fixture
def superuser_client(tenant) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def assert_api_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["field"], str)
    if code is not None:
        assert error["code"] == code
    return error


HOSTILE_USAGE_PARAMETERS = {
    "year-9999": ({"since": "9999-12-31", "until": "9999-12-31"}, "since"),
    "until-9999": ({"since": "2025-03-01", "until": "9999-12-31"}, "until"),
    "team-nul": ({**RANGE, "team": "\x00"}, "team"),
    "model-nul": ({**RANGE, "model": "a\x00b"}, "model"),
    "superscript-status": ({**RANGE, "status": "²"}, "status"),
    "page-size": ({**RANGE, "page_size": "many"}, "page_size"),
}
# The CSV export is not paginated, so it takes no page_size.
HOSTILE_USAGE_CASES = [
    pytest.param(path, params, field, id=f"{path}-{name}")
    for path in ("/api/usage/", "/api/usage/export.csv")
    for name, (params, field) in HOSTILE_USAGE_PARAMETERS.items()
    if not (path.endswith(".csv") and "page_size" in params)
]


@pytest.mark.parametrize(("path", "params", "field"), HOSTILE_USAGE_CASES)
def test_hostile_usage_parameters_are_400s_naming_the_field(superuser_client, path, params, field):
    response = superuser_client.get(path, {"tenant": "acme", **params})
    assert assert_api_error(response, 400)["field"] == field


@pytest.mark.parametrize("path", ["/api/usage/", "/api/usage/export.csv", "/api/budgets/"])
def test_a_tenant_that_is_no_slug_answers_like_a_missing_one(superuser_client, path):
    assert_api_error(superuser_client.get(path, {**RANGE, "tenant": "acme\x00"}), 404, "not_found")


def test_a_forged_cursor_is_a_404_not_a_500(superuser_client):
    cursor = base64.b64encode(b"p=not-a-time").decode()
    response = superuser_client.get("/api/usage/", {"tenant": "acme", **RANGE, "cursor": cursor})
    assert_api_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "body",
    [-363, [], "x", None, {"since": 20250301, "until": "2025-03-31"}, {"since": ["2025-03-01"], "until": {}}],
    ids=["number", "list", "string", "null", "number-date", "list-and-object-dates"],
)
def test_hostile_async_export_bodies_are_400s(superuser_client, body):
    response = superuser_client.post(
        "/api/usage/exports/?tenant=acme", json.dumps(body), content_type="application/json"
    )
    error = assert_api_error(response, 400)
    assert error["code"] in ("invalid_request", "invalid_date")


def test_validation_errors_list_every_invalid_field(superuser_client):
    response = superuser_client.post(
        "/api/usage/exports/?tenant=acme", {"since": ["x"], "until": {}}, content_type="application/json"
    )
    error = assert_api_error(response, 400, "invalid_request")
    assert set(error["details"]) == {"since", "until"} and error["field"] == "since"


@pytest.fixture
def routing_policy(db):
    routing = make_routing_tenant("initech")
    return routing_policy_create_default(tenant=routing.tenant, small_model=routing.small, large_model=routing.large)


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"model": "auto", "messages": [{"role": 5}]}, "request.messages.0.role"),
        ({"model": "auto", "messages": [{"role": "user", "content": 7}]}, "request.messages.0.content"),
        ({"model": "auto", "messages": [{"role": "user", "content": [1]}]}, "request.messages.0.content.0"),
        ({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "metadata": "x"}, "request.metadata"),
        ({"model": "auto", "messages": [{"role": "user", "name": {"a": 1}}]}, "request.messages.0.name"),
        ({"model": ["auto"], "messages": [{"role": "user"}]}, "request.model"),
        ({"model": "auto", "messages": []}, "request.messages"),
    ],
    ids=[
        "role-number",
        "content-number",
        "content-part-number",
        "metadata-string",
        "name-object",
        "model-list",
        "none",
    ],
)
def test_hostile_simulation_requests_are_400s(superuser_client, routing_policy, request_body, field):
    payload = {"tenant": "initech", "request": request_body}
    response = superuser_client.post("/api/routing/simulate", payload, content_type="application/json")
    error = assert_api_error(response, 400, "invalid_request")
    assert error["field"] == field, error


def test_a_valid_simulation_still_answers(superuser_client, routing_policy):
    request_body = {
        "model": "auto",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Summarise this"}]}],
        "metadata": {"task_type": "summarization"},
        "max_tokens": 100,
    }
    response = superuser_client.post(
        "/api/routing/simulate", {"tenant": "initech", "request": request_body}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["request"]["task_type"] == "summarization"


@pytest.mark.parametrize("body", [-363, [], "x", {"limit_usd": "1", "channels": [2**70]}, {"limit_usd": "1e400"}])
def test_hostile_budget_bodies_are_400s(superuser_client, body):
    response = superuser_client.post("/api/budgets/?tenant=acme", json.dumps(body), content_type="application/json")
    assert_api_error(response, 400, "invalid_request")


def test_unknown_paths_methods_and_anonymous_callers_get_json(superuser_client):
    assert_api_error(superuser_client.get("/api/no-such-endpoint"), 404, "not_found")
    assert_api_error(superuser_client.get("/api/usage/exports/999999/"), 404, "not_found")
    method = superuser_client.put("/api/usage/", {}, content_type="application/json")
    assert_api_error(method, 405, "method_not_allowed")
    assert "GET" in method["Allow"]
    assert_api_error(Client().get("/api/budgets/"), 403, "not_authenticated")
    broken = superuser_client.post("/api/budgets/?tenant=acme", b"{", content_type="application/json")
    assert_api_error(broken, 400, "invalid_json")


@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug"])
def test_a_write_without_the_trailing_slash_is_refused_not_redirected_into_a_get(superuser_client, settings, debug):
    settings.DEBUG = debug
    body = json.dumps({"limit_usd": "10"})

    refused = superuser_client.post("/api/budgets?tenant=acme", body, content_type="application/json")
    listed = superuser_client.get("/api/budgets/?tenant=acme").json()
    read = superuser_client.get("/api/budgets?tenant=acme")
    created = superuser_client.post("/api/budgets/?tenant=acme", body, content_type="application/json")

    error = assert_api_error(refused, 404, "not_found")
    assert "/api/budgets/" in error["message"] and listed == []
    # A read keeps APPEND_SLASH's redirect: following it loses nothing. The body was a valid budget all along.
    assert (read.status_code, read["Location"]) == (301, "/api/budgets/?tenant=acme")
    assert created.status_code == 201, created.content


def test_the_schema_documents_the_error_shape(superuser_client):
    schema = superuser_client.get("/api/schema/", {"format": "json"}).json()
    assert {"ApiError", "OpenAIError"} <= set(schema["components"]["schemas"])
    assert not [path for path in schema["paths"] if not path.startswith("/api/")]
    csv_errors = schema["paths"]["/api/usage/export.csv"]["get"]["responses"]["400"]["content"]
    assert list(csv_errors) == ["application/json"]
    assert_api_error(superuser_client.get("/api/schema/", {"format": ""}), 400, "invalid_request")
