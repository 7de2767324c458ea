"""Hostile input against the live gateway: property-based (hypothesis) on /v1, schema-driven (schemathesis) on /api.

No 500, no hang (every call has a timeout), and no answer or ledger row that belongs to another tenant.
The figures (examples per endpoint) are printed with `-s`; docs/security.md records a run.
"""

import json
import secrets
import string
import time
from collections import Counter

import httpx
import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from billing.models import UsageRecord
from tests.factories import UserFactory

EXAMPLES = Counter()
FAILURES: list[str] = []
FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True
)
TIMEOUT = httpx.Timeout(15)

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
edge_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Z", "Cf", "Co"]), max_size=200
) | st.sampled_from(["", "\u202e\u2066", "\ufeff", "𝕳𝖊𝖑𝖑𝖔", "a" * 5000, "\x00", "🦜" * 50, "globex"])
numbers = st.integers(-(2**63), 2**64) | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0, -1])
roles = st.sampled_from(["user", "system", "assistant", "tool", "developer", "function", "", "root"])
content = edge_text | st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "bogus"]), "text": edge_text}), max_size=3
)
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": content | json_values}), max_size=4)


def chat_bodies(model: str):
    """Mostly well-formed bodies with one or more fields wrong in type, range or encoding, plus unknown fields."""
    return st.fixed_dictionaries(
        {"model": st.just(model) | edge_text | json_values, "messages": messages | json_values},
        optional={
            "max_tokens": numbers | json_values,
            "temperature": numbers | json_values,
            "top_p": numbers,
            "n": numbers,
            "stream": st.booleans() | json_values,
            "stream_options": json_values,
            "metadata": json_values,
            "tools": json_values,
            "user": edge_text,
            "x-unknown-field": json_values,
            "logit_bias": json_values,
        },
    )


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


def _no_server_error(response: httpx.Response, label: str) -> None:
    EXAMPLES[label] += 1
    if response.status_code >= 500 and response.status_code not in (502, 503, 504):
        FAILURES.append(f"{label}: {response.status_code} {response.text[:200]}")
    assert response.status_code < 500 or response.status_code in (502, 503, 504), response.text[:500]


def _no_other_tenant(response: httpx.Response, other) -> None:
    assert other.small.name not in response.text and other.key not in response.text


def test_chat_completions_survive_malformed_bodies(fuzz_client, acme, globex):
    @FUZZ
    @given(body=chat_bodies(acme.small.name))
    def run(body):
        response = fuzz_client.post(
            "/v1/chat/completions", headers={"Authorization": f"Bearer {acme.key}"}, content=json.dumps(body)
        )
        _no_server_error(response, "POST /v1/chat/completions (json bodies)")
        _no_other_tenant(response, globex)

    run()
    assert not UsageRecord.objects.filter(tenant=globex.tenant).exists()


def test_chat_completions_survive_raw_bytes(fuzz_client, acme):
    @FUZZ
    @given(raw=st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
    def run(raw):
        response = fuzz_client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {acme.key}", "Content-Type": "application/json"},
            content=raw,
        )
        _no_server_error(response, "POST /v1/chat/completions (raw bytes)")

    run()


def test_headers_and_keys_survive_garbage(fuzz_client, acme):
    @FUZZ
    @given(tags=header_values, task=header_values, auth=header_values)
    def run(tags, task, auth):
        body = {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]}
        for authorization in (f"Bearer {acme.key}", auth):
            response = fuzz_client.post(
                "/v1/chat/completions",
                headers={
                    "Authorization": authorization,
                    "x-llmops-tags": tags,
                    "x-llmops-task-type": task,
                    "x-llmops-user-tier": tags,
                },
                json=body,
            )
            _no_server_error(response, "POST /v1/chat/completions (headers)")
            assert "\r" not in "".join(response.headers.values())

    run()


def test_models_endpoints_survive_hostile_ids(fuzz_client, acme, globex):
    @FUZZ
    @given(model_id=st.text(alphabet=string.ascii_letters + string.digits + "-._~%:@", min_size=1, max_size=300))
    def run(model_id):
        response = fuzz_client.get(f"/v1/models/{model_id}", headers={"Authorization": f"Bearer {acme.key}"})
        _no_server_error(response, "GET /v1/models/{id}")

    run()
    other = fuzz_client.get(f"/v1/models/{globex.small.name}", headers={"Authorization": f"Bearer {acme.key}"})
    assert other.status_code == 404


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
    response = fuzz_client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {acme.key}"}, content=body)
    assert response.status_code == status
    if code:
        assert response.json()["error"]["code"] == code


def test_nesting_within_the_limit_is_not_refused_for_depth(fuzz_client, acme):
    nested = {"role": "user", "content": "hi"}
    metadata: dict = {}
    cursor = metadata
    for _ in range(60):
        cursor["k"] = {}
        cursor = cursor["k"]
    body = {"model": acme.small.name, "messages": [nested], "metadata": metadata}
    response = fuzz_client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {acme.key}"}, json=body)
    assert response.json().get("error", {}).get("code") != "json_too_deep"


def test_a_body_over_the_limit_is_refused_with_413(fuzz_client, acme, settings):
    settings.LLMOPS_MAX_BODY_BYTES = 64 * 1024
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = fuzz_client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {acme.key}"}, json=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("max_tokens", [2**31, 10**18, -1, 0, 1.5, "100", None])
def test_enormous_or_negative_max_tokens_never_reach_a_500(fuzz_client, acme, max_tokens):
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    response = fuzz_client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {acme.key}"}, json=body)
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
        print(f"FUZZ {count:6d} {label}")
    for failure in FAILURES:
        print(f"FUZZ FAILURE {failure}")
