import csv
import io
import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.test import override_settings

from billing.models import UsageExport, UsageRecord
from llmops.gateway.chat.planning import TAGS_HEADER, request_tags
from llmops.gateway.errors import GatewayError
from tenants.models import Role
from tenants.services import membership_set
from tests.factories import UserFactory
from tests.finance.conftest import usage_row

DAY = datetime(2025, 3, 3, 12, tzinfo=UTC)
RANGE = {"since": "2025-03-01", "until": "2025-03-31"}


@pytest.fixture
def ledgers(acme, globex):
    UsageRecord.objects.bulk_create(
        [
            usage_row(acme.keys[0], created_at=DAY, cost="0.1000000000", model="m-small"),
            usage_row(acme.keys[1], created_at=DAY + timedelta(hours=1), cost="0.2000000000", model="m-large"),
            usage_row(acme.keys[1], created_at=DAY + timedelta(days=1), cost="0.0300000000", http_status=502),
            usage_row(globex.keys[0], created_at=DAY, cost="9.0000000000", model="globex-secret-model"),
        ]
    )
    return acme, globex


def csv_rows(response) -> list[dict]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_export_csv_streams_ledger_rows_of_the_callers_tenant(client, ledgers):
    acme, _ = ledgers
    client.force_login(acme.finance_user)
    response = client.get("/api/usage/export.csv", {"tenant": "acme", **RANGE})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = csv_rows(response)
    assert [row["cost_usd"] for row in rows] == ["0.1000000000", "0.2000000000", "0.0300000000"]
    assert {row["team"] for row in rows} == {"acme-search", "acme-support"}


def test_export_csv_groups_by_team_and_model(client, ledgers):
    acme, _ = ledgers
    client.force_login(acme.finance_user)
    response = client.get("/api/usage/export.csv", {**RANGE, "group_by": "team,model"})
    rows = csv_rows(response)
    assert [(row["team"], row["model"], row["requests"], row["cost_usd"]) for row in rows] == [
        ("acme-search", "m-small", "1", "0.1000000000"),
        ("acme-support", "m-large", "1", "0.2000000000"),
        ("acme-support", "m-small", "1", "0.0300000000"),
    ]


def test_export_csv_groups_by_the_request_tag_set(client, acme):
    UsageRecord.objects.bulk_create(
        [
            usage_row(acme.keys[0], created_at=DAY, cost="0.1000000000", tags=["checkout", "eu"]),
            usage_row(acme.keys[0], created_at=DAY, cost="0.2000000000", tags=["checkout", "eu"]),
            usage_row(acme.keys[1], created_at=DAY, cost="0.0400000000", tags=["search"]),
            usage_row(acme.keys[1], created_at=DAY, cost="0.0050000000"),
        ]
    )
    client.force_login(acme.finance_user)

    response = client.get("/api/usage/export.csv", {"tenant": "acme", **RANGE, "group_by": "tag"})

    assert response.status_code == 200
    assert {(row["tag"], row["requests"], row["cost_usd"]) for row in csv_rows(response)} == {
        ("checkout+eu", "2", "0.3000000000"),
        ("search", "1", "0.0400000000"),
        ("(untagged)", "1", "0.0050000000"),
    }


def test_tag_groups_of_the_tag_sets_the_gateway_admits_have_labels_of_their_own(client, acme):
    """`a+b` is the label of the tag set {a, b}, `(untagged)` that of no tags: the gateway refuses them as tags."""
    admitted = []
    for header in ("a+b", "a, b", "(untagged)", ""):
        try:
            admitted.append(request_tags({TAGS_HEADER: header}))
        except GatewayError:
            continue
    UsageRecord.objects.bulk_create(
        [usage_row(acme.keys[0], created_at=DAY, cost="0.1000000000", tags=tags) for tags in admitted]
    )
    client.force_login(acme.finance_user)

    exported = csv_rows(client.get("/api/usage/export.csv", {**RANGE, "group_by": "tag"}))
    listed = client.get("/api/usage/", {**RANGE, "group_by": "tag"}).json()["results"]

    assert sorted(row["tag"] for row in exported) == sorted(row["tag"] for row in listed) == ["(untagged)", "a+b"]
    assert {row["requests"] for row in exported} == {"1"}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"since": "2025-03-10", "until": "2025-03-01"}, "invalid_range"),
        ({"since": "yesterday", "until": "2025-03-01"}, "invalid_date"),
        ({"until": "2025-03-01"}, "invalid_request"),
        ({**RANGE, "group_by": "day,planet"}, "unknown_grouping"),
        ({**RANGE, "status": "sometimes"}, "invalid_status"),
        ({**RANGE, "cache": "warm"}, "invalid_cache"),
        ({"since": "2020-01-01", "until": "2025-01-01"}, "range_too_large"),
    ],
)
def test_bad_export_parameters_answer_a_json_error(client, acme, params, code):
    client.force_login(acme.finance_user)
    response = client.get("/api/usage/export.csv", params, HTTP_ACCEPT="text/csv")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


@override_settings(LLMOPS_EXPORT_SYNC_MAX_DAYS=31)
def test_long_range_offers_the_async_export_which_writes_the_same_csv(
    client, ledgers, tmp_path, settings, eager_celery, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    acme, _ = ledgers
    client.force_login(acme.finance_user)
    params = {"since": "2025-02-01", "until": "2025-04-30"}
    refused = client.get("/api/usage/export.csv", params)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "range_too_large_for_sync_export"
    assert error["async_export"]["url"] == "/api/usage/exports/"

    with django_capture_on_commit_callbacks(execute=True):
        created = client.post("/api/usage/exports/", {**params, "group_by": "day"})
    assert created.status_code == 202
    export = UsageExport.objects.unscoped().get(pk=created.json()["id"])
    status = client.get(created.json()["status_url"]).json()
    assert status["status"] == "done"
    download = client.get(status["download_url"])
    body = b"".join(download.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [(row["day"], row["cost_usd"]) for row in rows] == [
        ("2025-03-03", "0.3000000000"),
        ("2025-03-04", "0.0300000000"),
    ]
    assert export.tenant == acme.tenant


def test_usage_api_lists_filters_and_groups(client, ledgers):
    acme, _ = ledgers
    client.force_login(acme.finance_user)
    listed = client.get("/api/usage/", {**RANGE, "page_size": 2}).json()
    assert [row["cost_usd"] for row in listed["results"]] == ["0.0300000000", "0.2000000000"]
    assert listed["next"]
    assert [row["cost_usd"] for row in client.get(listed["next"]).json()["results"]] == ["0.1000000000"]

    errors = client.get("/api/usage/", {**RANGE, "status": "error"}).json()["results"]
    assert [row["http_status"] for row in errors] == [502]
    by_team = client.get("/api/usage/", {**RANGE, "team": "acme-support", "group_by": "model"}).json()
    assert by_team["count"] == 2
    assert [(row["model"], row["cost_usd"]) for row in by_team["results"]] == [
        ("m-large", "0.2000000000"),
        ("m-small", "0.0300000000"),
    ]


@pytest.mark.parametrize("role", [None, Role.VIEWER])
@pytest.mark.parametrize(
    "path", ["/api/usage/", "/api/usage/export.csv", "/api/usage/?group_by=model", "/api/usage/export.csv?group_by=day"]
)
def test_another_tenants_usage_answers_404_and_leaks_nothing(client, ledgers, path, role):
    acme, globex = ledgers
    if role:
        membership_set(tenant=globex.tenant, user=acme.finance_user, role=role)
    client.force_login(acme.finance_user)
    separator = "&" if "?" in path else "?"
    response = client.get(f"{path}{separator}tenant=globex&since=2025-03-01&until=2025-03-31")
    assert response.status_code == 404
    body = response.content.decode()
    assert "globex-secret-model" not in body and "9.0000000000" not in body


def test_another_tenants_async_export_answers_404(client, ledgers, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    acme, globex = ledgers
    client.force_login(globex.finance_user)
    assert client.post("/api/usage/exports/", {"tenant": "acme", **RANGE}).status_code == 404
    export = UsageExport.objects.create(tenant=globex.tenant, since=date(2025, 3, 1), until=date(2025, 3, 31))
    client.force_login(acme.finance_user)
    assert client.get(f"/api/usage/exports/{export.pk}/").status_code == 404
    assert client.get(f"/api/usage/exports/{export.pk}/download").status_code == 404


def test_a_user_without_membership_sees_no_tenant(client, ledgers):
    client.force_login(UserFactory())
    response = client.get("/api/usage/", RANGE)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_tenant"
    assert client.get("/api/usage/", {"tenant": "acme", **RANGE}).status_code == 404


def test_anonymous_callers_are_refused(client, ledgers):
    assert client.get("/api/usage/export.csv", {"tenant": "acme", **RANGE}).status_code == 403


def test_openapi_schema_and_docs_page_are_served_locally(client, acme):
    schema = client.get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/usage/", "/api/usage/export.csv", "/api/usage/exports/"} <= set(paths)
    docs = client.get("/api/schema/docs/").content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in docs
    # No script or style from another host (a CDN): every src and href is a path on this server.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", docs)


def for_customer(row: UsageRecord, customer: str) -> UsageRecord:
    row.customer = customer
    return row


@pytest.fixture
def customer_ledgers(acme, globex):
    """The rows of `ledgers`, acme's first two for the end customer alice and the third for bob; globex's an alice of
    its own."""
    UsageRecord.objects.bulk_create(
        [
            for_customer(usage_row(acme.keys[0], created_at=DAY, cost="0.1000000000", model="m-small"), "alice"),
            for_customer(
                usage_row(acme.keys[1], created_at=DAY + timedelta(hours=1), cost="0.2000000000", model="m-large"),
                "alice",
            ),
            for_customer(
                usage_row(acme.keys[1], created_at=DAY + timedelta(days=1), cost="0.0300000000", http_status=502),
                "bob",
            ),
            for_customer(usage_row(globex.keys[0], created_at=DAY, cost="9.0000000000"), "alice"),
        ]
    )
    return acme, globex


@pytest.mark.parametrize(("field", "value"), [("team", "acme-support"), ("customer", "alice")])
def test_async_export_applies_the_sync_exports_filters(
    client, customer_ledgers, tmp_path, settings, eager_celery, django_capture_on_commit_callbacks, field, value
):
    settings.MEDIA_ROOT = tmp_path
    acme, _ = customer_ledgers
    client.force_login(acme.finance_user)
    params = {"tenant": "acme", **RANGE, field: value}

    with django_capture_on_commit_callbacks(execute=True):
        created = client.post("/api/usage/exports/", params, content_type="application/json")
    assert created.status_code == 202
    status = client.get(created.json()["status_url"]).json()
    assert status["status"] == "done"
    assert status["filters"] == {field: value}
    download = client.get(status["download_url"])
    exported = list(csv.DictReader(io.StringIO(b"".join(download.streaming_content).decode())))
    streamed = csv_rows(client.get("/api/usage/export.csv", params))

    assert len(exported) == 2
    assert {row[field] for row in exported} == {value}
    assert exported == streamed


def test_async_export_refuses_a_field_it_does_not_take(client, ledgers):
    acme, _ = ledgers
    client.force_login(acme.finance_user)

    in_body = client.post("/api/usage/exports/", {**RANGE, "teams": "acme-search"}, content_type="application/json")
    in_query = client.post("/api/usage/exports/?team=acme-search", RANGE, content_type="application/json")

    for refused, field in ((in_body, "teams"), (in_query, "team")):
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_request", field)
    assert not UsageExport.objects.for_tenant(acme.tenant).exists()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/usage/export.csv"),
        ("get", "/api/usage/"),
        ("post", "/api/usage/exports/"),
        ("get", "/api/usage/customer-statement.csv"),
    ],
)
def test_a_filter_of_only_spaces_is_refused_not_read_as_no_filter(client, customer_ledgers, method, path):
    acme, _ = customer_ledgers
    client.force_login(acme.finance_user)
    params = {"tenant": "acme", **RANGE, "customer": " "}

    if method == "post":
        response = client.post(path, params, content_type="application/json")
    else:
        response = client.get(path, params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "customer")
    assert not UsageExport.objects.for_tenant(acme.tenant).exists()
