"""Hostile input against the live gateway: property-based (hypothesis) on /v1 and on the batch, files and jobs
endpoints, schema-driven (schemathesis) on /api.

No 5xx (the mock upstream never fails here), no hang (every call has a timeout), no answer or ledger row that
belongs to another tenant, and the ledger checked afterwards: every chat completion that passed authentication
(over HTTP, as a job, as a batch line) has exactly one ledger row, found by its request id, and there is no other.
The figures (requests, status classes, authenticated requests and ledger rows per endpoint) are printed with `-s`;
docs/security.md records a run.
"""

import json
import secrets
import string
import time
from collections import Counter, defaultdict
from urllib.parse import quote

import httpx
import hypothesis
import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from billing.models import UsageRecord
from llmops.gateway.batches.models import BatchLine, Job
from llmops.gateway.batches.runner import batch_process
from llmops.gateway.chat.validation import validate_chat_request, validate_storable
from llmops.gateway.errors import GatewayError
from llmops.gateway.jobs.services import job_request_id, job_run
from tests.chat_bodies import (
    chat_bodies,
    edge_text,
    json_values,
    numbers,
    right_or_one_field_wrong,
    well_shaped_bodies,
)
from tests.factories import UserFactory
from tests.loops import run as run_on_a_new_loop

EXAMPLES = Counter()
FAILURES: list[str] = []
# Per endpoint: answers by status class, and authenticated chat completions against the ledger rows found for them.
STATUSES: defaultdict[str, Counter] = defaultdict(Counter)
LEDGER: defaultdict[str, Counter] = defaultdict(Counter)
FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True
)
TIMEOUT = httpx.Timeout(15)
CHAT = "/v1/chat/completions"


def fuzz(examples: int):
    return settings(FUZZ, max_examples=examples)


def _sendable_header(text: str) -> bytes:
    """UTF-8 with what HTTP/1.1 cannot carry at all (control characters, edge whitespace) taken out client-side."""
    return bytes(byte for byte in text.encode("utf-8", "replace") if byte >= 0x20 and byte != 0x7F).strip()


header_values = (st.text(max_size=300) | st.sampled_from(["a" * 8000, "é", "team=x, team=y", "a=b; c=d"])).map(
    _sendable_header
)


@pytest.fixture
def fuzz_client(gateway, acme, globex):
    with httpx.Client(base_url=gateway.url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def files_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def _auth(tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def _answered(response: httpx.Response, label: str) -> httpx.Response:
    EXAMPLES[label] += 1
    STATUSES[label][f"{response.status_code // 100}xx"] += 1
    if response.status_code >= 500:
        FAILURES.append(f"{label}: {response.status_code} {response.text[:200]}")
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400 and response.request.url.path.startswith("/v1/"):
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert response.headers["x-llmops-request-id"].startswith("req_")
    return response


def _no_other_tenant(response: httpx.Response, other) -> None:
    assert other.small.name not in response.text and other.key not in response.text


def _ledger_holds_exactly(label: str, request_ids: list[str], tenant, *, counted_as: str = "authenticated") -> None:
    """Each of these requests has one ledger row, and the tenant has no other."""
    rows = list(UsageRecord.objects.unscoped().filter(tenant=tenant).values_list("request_id", flat=True))
    LEDGER[label][counted_as] += len(request_ids)
    LEDGER[label]["ledger rows"] += len(set(rows) & set(request_ids))
    assert sorted(rows) == sorted(request_ids)


def test_chat_completions_survive_malformed_bodies(fuzz_client, acme, globex):
    label = f"POST {CHAT} (json bodies)"
    request_ids = []

    @FUZZ
    @given(body=chat_bodies(acme.small.name))
    @hypothesis.example(body={"model": acme.small.name, "messages": [{"role": ["user"], "content": "hi"}]})
    @hypothesis.example(body={"model": acme.small.name, "messages": [{"role": {"user": 1}, "content": "hi"}]})
    @hypothesis.example(body={"model": acme.small.name, "messages": [{"role": 1, "content": "hi"}]})
    @hypothesis.example(body={"model": acme.small.name, "messages": [{"role": "user", "content": "hi", "name": {}}]})
    def run(body):
        response = _answered(fuzz_client.post(CHAT, headers=_auth(acme), content=json.dumps(body)), label)
        request_ids.append(response.headers["x-llmops-request-id"])
        _no_other_tenant(response, globex)

    run()
    _ledger_holds_exactly(label, request_ids, acme.tenant)
    assert not UsageRecord.objects.unscoped().filter(tenant=globex.tenant).exists()


def test_chat_completions_survive_raw_bytes(fuzz_client, acme):
    label = f"POST {CHAT} (raw bytes)"
    request_ids = []

    @fuzz(75)
    @given(raw=st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
    def run(raw):
        headers = {**_auth(acme), "Content-Type": "application/json"}
        response = _answered(fuzz_client.post(CHAT, headers=headers, content=raw), label)
        request_ids.append(response.headers["x-llmops-request-id"])

    run()
    _ledger_holds_exactly(label, request_ids, acme.tenant)


def test_headers_and_keys_survive_garbage(fuzz_client, acme):
    label = f"POST {CHAT} (headers)"
    request_ids = []

    @fuzz(75)
    @given(tags=header_values, task=header_values, auth=header_values)
    def run(tags, task, auth):
        body = {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]}
        for authorization in (f"Bearer {acme.key}", auth):
            headers = {
                "Authorization": authorization,
                "x-llmops-tags": tags,
                "x-llmops-task-type": task,
                "x-llmops-user-tier": tags,
            }
            response = _answered(fuzz_client.post(CHAT, headers=headers, json=body), label)
            assert "\r" not in "".join(response.headers.values())
            if response.status_code != 401:
                request_ids.append(response.headers["x-llmops-request-id"])

    run()
    _ledger_holds_exactly(label, request_ids, acme.tenant)


def test_models_endpoints_survive_hostile_ids(fuzz_client, acme, globex):
    @FUZZ
    @given(model_id=st.text(alphabet=string.ascii_letters + string.digits + "-._~%:@", min_size=1, max_size=300))
    def run(model_id):
        _answered(fuzz_client.get(f"/v1/models/{model_id}", headers=_auth(acme)), "GET /v1/models/{id}")

    run()
    other = fuzz_client.get(f"/v1/models/{globex.small.name}", headers=_auth(acme))
    assert other.status_code == 404


hostile_ids = st.text(min_size=1, max_size=60) | st.sampled_from(["\x00", "file-\x00", "../../etc/passwd", "%", " "])
query_values = st.none() | st.text(max_size=40) | st.integers(-5, 500).map(str) | st.just("a\x00")


def test_files_batches_and_jobs_survive_hostile_ids_and_parameters(fuzz_client, acme, files_root):
    @fuzz(20)
    @given(
        object_id=hostile_ids,
        after=query_values,
        limit=query_values,
        other=query_values,
        any_method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    )
    def run(object_id, after, limit, other, any_method):
        quoted = quote(object_id, safe="")
        response = fuzz_client.request(any_method, f"/v1/{quoted}", headers=_auth(acme))
        _answered(response, "any method /v1/{anything}")
        for method, template in [
            ("GET", "/v1/files/{id}"),
            ("GET", "/v1/files/{id}/content"),
            ("DELETE", "/v1/files/{id}"),
            ("GET", "/v1/batches/{id}"),
            ("POST", "/v1/batches/{id}/cancel"),
            ("GET", "/api/jobs/{id}"),
        ]:
            response = fuzz_client.request(method, template.format(id=quoted), headers=_auth(acme))
            _answered(response, f"{method} {template}")
        pages = {"after": after, "limit": limit}
        _answered(
            fuzz_client.get("/v1/files", headers=_auth(acme), params={**pages, "purpose": other, "order": other}),
            "GET /v1/files",
        )
        _answered(fuzz_client.get("/v1/batches", headers=_auth(acme), params=pages), "GET /v1/batches")

    run()


def _jsonl(lines: list) -> bytes:
    return b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines) + b"\n"


def _chat_line(body) -> dict:
    return {"custom_id": secrets.token_hex(4), "method": "POST", "url": CHAT, "body": body}


def _not_streamed(body: dict) -> dict:
    return {name: value for name, value in body.items() if name not in ("stream", "stream_options")}


def batch_lines(model: str):
    """Chat lines with a body from ``chat_bodies``, and lines broken in every other way OpenAI names."""
    line = chat_bodies(model).map(_chat_line)
    return st.one_of(
        line,
        line,
        line,
        line.map(lambda item: {**item, "custom_id": 7}),
        line.map(lambda item: {**item, "custom_id": "same"}),
        line.map(lambda item: {**item, "method": "GET"}),
        line.map(lambda item: {**item, "url": "/v1/embeddings"}),
        json_values,
        st.binary(max_size=40).filter(lambda raw: b"\n" not in raw and b"\r" not in raw),
    )


def _valid(body: dict) -> bool:
    try:
        validate_chat_request(body)
        validate_storable(body)
    except GatewayError:
        return False
    return True


def valid_batch_files(model: str):
    lines = well_shaped_bodies(model).map(_not_streamed).filter(_valid).map(_chat_line)
    return st.lists(lines, min_size=1, max_size=3)


def _upload(client: httpx.Client, tenant, *, content: bytes, purpose="batch", filename="batch.jsonl") -> httpx.Response:
    return client.post(
        "/v1/files", headers=_auth(tenant), files={"file": (filename, content)}, data={"purpose": purpose}
    )


def test_file_uploads_and_batch_creation_survive_malformed_input(fuzz_client, acme, files_root):
    uploaded = _upload(fuzz_client, acme, content=_jsonl([{"custom_id": "a", "method": "POST", "url": CHAT}]))
    file_id = _answered(uploaded, "POST /v1/files").json()["id"]

    @fuzz(40)
    @given(
        purpose=st.one_of(st.just("batch"), st.just("batch"), edge_text),
        filename=edge_text,
        content=st.one_of(lines := st.lists(batch_lines(acme.small.name), max_size=3).map(_jsonl), lines, st.binary()),
    )
    def upload(purpose, filename, content):
        _answered(_upload(fuzz_client, acme, content=content, purpose=purpose, filename=filename), "POST /v1/files")

    @fuzz(40)
    @given(
        body=right_or_one_field_wrong(
            st.fixed_dictionaries(
                {"input_file_id": st.just(file_id), "endpoint": st.just(CHAT), "completion_window": st.just("24h")},
                optional={"metadata": st.dictionaries(st.text(max_size=64), edge_text, max_size=3)},
            )
        )
        | json_values,
        idempotency_key=st.one_of(st.none(), st.none(), header_values),
    )
    def create(body, idempotency_key):
        headers = _auth(acme) | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})
        _answered(fuzz_client.post("/v1/batches", headers=headers, content=json.dumps(body)), "POST /v1/batches")

    upload()
    create()


def test_batch_lines_are_refused_line_by_line_or_run_with_one_ledger_row_each(fuzz_client, acme, files_root):
    """The input file and the batch through the live gateway, validation and the run in this process (as a Celery
    worker runs them): a malformed line fails the batch with an error naming its line, as OpenAI does; a valid
    batch runs every line, each with one ledger row."""
    label = "batch lines"
    request_ids = []

    def submitted_and_run(lines: list) -> dict | None:
        uploaded = _answered(_upload(fuzz_client, acme, content=_jsonl(lines)), f"POST /v1/files ({label})")
        if uploaded.status_code != 200:
            return None
        body = {"input_file_id": uploaded.json()["id"], "endpoint": CHAT, "completion_window": "24h"}
        created = fuzz_client.post("/v1/batches", headers=_auth(acme), json=body)
        batch_id = _answered(created, f"POST /v1/batches ({label})").json()["id"]
        run_on_a_new_loop(batch_process(batch_id))
        batch = fuzz_client.get(f"/v1/batches/{batch_id}", headers=_auth(acme))
        batch = _answered(batch, f"GET /v1/batches/{{id}} ({label})").json()
        ran = BatchLine.objects.unscoped().filter(batch_id=batch["id"]).values_list("status_code", "request_id")
        assert all(status < 500 for status, _ in ran), list(ran)
        request_ids.extend(request_id for _, request_id in ran)
        LEDGER[label]["lines submitted"] += len(lines)
        return batch

    @fuzz(15)
    @given(lines=st.lists(batch_lines(acme.small.name), min_size=1, max_size=4))
    def refused_by_line_or_run(lines):
        batch = submitted_and_run(lines)
        if batch is None or batch["status"] == "completed":
            return
        assert batch["status"] == "failed", batch
        errors = batch["errors"]["data"]
        # An error of the whole file (every line blank, the file gone, the budget) has no line; any other names its
        # line, from 1.
        whole_file = ("empty_file", "file_not_found", "budget_exceeded")
        assert errors and all(error["code"] and error["message"] for error in errors)
        assert all((error["line"] is None) == (error["code"] in whole_file) for error in errors), errors
        assert all(error["line"] is None or error["line"] >= 1 for error in errors), errors
        error_file = fuzz_client.get(f"/v1/files/{batch['error_file_id']}/content", headers=_auth(acme))
        rows = _answered(error_file, f"GET /v1/files/{{id}}/content ({label})").content.splitlines()
        assert [json.loads(row)["line"] for row in rows] == [error["line"] for error in errors]

    @fuzz(6)
    @given(lines=valid_batch_files(acme.small.name))
    def run(lines):
        batch = submitted_and_run(lines)
        assert batch["status"] == "completed" and batch["request_counts"]["total"] == len(lines), batch

    refused_by_line_or_run()
    run()
    _ledger_holds_exactly(label, request_ids, acme.tenant, counted_as="lines run")


def test_jobs_survive_malformed_bodies_and_each_run_has_one_ledger_row(fuzz_client, acme):
    label = "POST /api/jobs"
    accepted = []

    @fuzz(60)
    @given(body=chat_bodies(acme.small.name), callback_url=st.none() | json_values | numbers)
    def create(body, callback_url):
        if callback_url is not None and isinstance(body, dict):
            body = {**body, "callback_url": callback_url}
        response = _answered(fuzz_client.post("/api/jobs", headers=_auth(acme), content=json.dumps(body)), label)
        if response.status_code == 202:
            accepted.append(response.json()["id"])

    create()
    for job_id in accepted:
        run_on_a_new_loop(job_run(job_id=job_id))
    statuses = dict(Job.objects.unscoped().filter(pk__in=accepted).values_list("pk", "status_code"))
    assert all(status is not None and status < 500 for status in statuses.values()), statuses
    request_ids = [job_request_id(job_id) for job_id in accepted]
    _ledger_holds_exactly(f"{label} (accepted, then run)", request_ids, acme.tenant, counted_as="jobs run")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"[" * 65 + b"]" * 65, 400, "json_too_deep"),
        (b'{"model": "m", "messages": ' + b"[" * 200 + b"]" * 200 + b"}", 400, "json_too_deep"),
        (b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
        (b"{" * 100_000, 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        (b'{"a": 1, "a": 2}', 400, None),
        (b"NaN", 400, None),
    ],
    ids=["65-deep", "200-deep-in-messages", "5000-deep", "unclosed-100k", "bad-utf8", "duplicate-keys", "nan"],
)
def test_deep_and_broken_json_get_a_clear_400(fuzz_client, acme, body, status, code):
    response = fuzz_client.post(CHAT, headers=_auth(acme), content=body)
    assert response.status_code == status
    if code:
        assert response.json()["error"]["code"] == code


def test_nesting_within_the_limit_is_not_refused_for_depth(fuzz_client, acme):
    nested = {"role": "user", "content": "hi"}
    schema: dict = {}
    cursor = schema
    for _ in range(60):
        cursor["k"] = {}
        cursor = cursor["k"]
    response_format = {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}
    body = {"model": acme.small.name, "messages": [nested], "response_format": response_format}
    response = fuzz_client.post(CHAT, headers=_auth(acme), json=body)
    assert response.json().get("error", {}).get("code") != "json_too_deep"


def test_a_body_over_the_limit_is_refused_with_413(fuzz_client, acme, settings):
    settings.LLMOPS_MAX_BODY_BYTES = 64 * 1024
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = fuzz_client.post(CHAT, headers=_auth(acme), json=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("max_tokens", [2**31, 10**18, -1, 0, 1.5, "100", None])
def test_enormous_or_negative_max_tokens_never_reach_a_500(fuzz_client, acme, max_tokens):
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    response = fuzz_client.post(CHAT, headers=_auth(acme), json=body)
    assert response.status_code < 500


def _session() -> tuple[dict[str, str], dict[str, str]]:
    """Cookies and headers of a signed-in superuser, CSRF token included."""
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    csrf = secrets.token_hex(16)
    return {"sessionid": client.cookies["sessionid"].value, "csrftoken": csrf}, {"X-CSRFToken": csrf}


# Valid input by the schema may still be refused for what a schema cannot say (since <= until, the tenant to name
# when the caller sees several, a team budget needs its team): 400 joins the statuses positive data may get.
CONTRACT = schemathesis.Config.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404"]}}}
)


def test_management_api_survives_schema_driven_input(gateway, acme, globex):
    """Every operation of /api/schema/, with valid and invalid input, under all of schemathesis's checks (status codes,
    content types, headers and bodies as documented, auth enforced, no 5xx), signed in as a superuser (the gateway key
    for /api/jobs). Prints requests, 5xx and contract mismatches per operation."""
    cookies, headers = _session()
    raw = httpx.get(f"{gateway.url}/api/schema/?format=json", cookies=cookies, timeout=TIMEOUT)
    schema = schemathesis.openapi.from_dict(raw.json(), config=CONTRACT)
    tallies = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        # Credentials are fixed, not generated: schemathesis probes the operation without them itself.
        if operation.path.startswith("/api/jobs"):
            credentials = {"headers": {"Authorization": f"Bearer {acme.key}"}}
        else:
            credentials = {"headers": headers, "cookies": cookies}
        tallies[f"{operation.method.upper()} {operation.path}"] = _fuzz_operation(
            operation, base_url=gateway.url, credentials=credentials
        )
    for label, tally in sorted(tallies.items()):
        print(
            f"SCHEMATHESIS {tally['requests']:4d} requests {tally['5xx']:3d} 5xx {tally['mismatches']:3d} mismatches "
            f"{tally['seconds']:5.1f} s {label}"
        )
        for example in tally["examples"]:
            print(f"SCHEMATHESIS   {example}")
    assert all(label.startswith(("GET /api/", "POST /api/", "PATCH /api/", "DELETE /api/")) for label in tallies)
    assert len(tallies) >= 15 and all(tally["requests"] for tally in tallies.values())
    assert {label: tally["5xx"] for label, tally in tallies.items() if tally["5xx"]} == {}
    assert {label: tally["examples"] for label, tally in tallies.items() if tally["mismatches"]} == {}


def _fuzz_operation(operation, *, base_url: str, credentials: dict) -> dict:
    """35 examples of valid input and 35 of invalid input; every check runs on every answer."""
    tally = {"requests": 0, "5xx": 0, "mismatches": 0, "examples": [], "started": time.monotonic()}
    transport = {"base_url": base_url, "timeout": 15}
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(max_examples=35, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode, **credentials))
        def run(case):
            response = case.call(**transport)
            tally["requests"] += 1
            tally["5xx"] += response.status_code >= 500
            try:
                case.validate_response(response, transport_kwargs=transport)
            except FailureGroup as failures:
                tally["mismatches"] += 1
                titles = sorted({failure.title for failure in failures.exceptions})
                if len(tally["examples"]) < 3:
                    details = "; ".join(failure.message for failure in failures.exceptions)
                    tally["examples"].append(
                        f"{case.as_curl_command()} -> {response.status_code} {titles}: {details[:600]}"
                    )

        try:
            run()
        except Unsatisfiable:  # the schema admits no invalid input for this operation (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE
    tally["seconds"] = time.monotonic() - tally.pop("started")
    return tally


def teardown_module(module):
    for label, count in sorted(EXAMPLES.items()):
        statuses = " ".join(f"{status}={STATUSES[label][status]}" for status in sorted(STATUSES[label]))
        print(f"FUZZ {count:6d} {label}  {statuses}".rstrip())
    for label, ledger in sorted(LEDGER.items()):
        print(f"FUZZ LEDGER {label}: " + ", ".join(f"{name} {count}" for name, count in ledger.items()))
    for failure in FAILURES:
        print(f"FUZZ FAILURE {failure}")
