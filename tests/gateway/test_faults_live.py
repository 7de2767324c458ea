"""Faults on the production shape: uvicorn with two workers and the ledger drainer, Postgres, Redis and the mock
upstream over loopback. Upstream answers that cannot be priced, and Postgres taken away from the gateway for a few
seconds (through a proxy that is cut, the shared server untouched), while requests keep coming: every answer is
JSON (or an event stream) with a request id and never a 500, every request that passed authentication has its
ledger row once the drainer catches up, and no budget reservation is left behind."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from itertools import count
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from django.db import OperationalError
from django.http import Http404
from django.test import Client, RequestFactory
from django.utils import timezone

from billing.budgets.selectors import budget_status
from billing.budgets.services import budget_counter_check, budget_create
from billing.models import UsageRecord
from llmops.gateway.last_resort import json_errors
from llmops.mock_upstream import MALFORMED_BODIES, MALFORMED_USAGE
from tenants.keys import generate_key
from tests.conftest import make_tenant_setup
from tests.factories import ModelFactory, ProviderFactory, UserFactory
from tests.gateway.test_config_changes_live import TwoWorkers
from tests.gateway.test_worst_case_live import wait_for_empty_stream
from tests.servers import TcpProxy, committed_database_url

OUTAGE_SECONDS = 5
RECOVERY_SECONDS = 20
MALFORMED = [(kind, stream) for kind in (*MALFORMED_USAGE, *MALFORMED_BODIES) for stream in (False, True)]
_prompts = count()


@dataclass
class Answer:
    what: str  # healthy, malformed or cold
    phase: str  # before, during or after the outage
    stream: bool
    status: int
    headers: httpx.Headers
    text: str

    @property
    def request_id(self) -> str:
        return self.headers.get("x-llmops-request-id", "")

    @property
    def error_code(self) -> str | None:
        """The error the answer carries: the JSON body's, or a stream's closing error event's."""
        text = self.text
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            text = self.text.strip().rsplit("\n\n", 1)[-1].removeprefix("data: ")
            if text == "[DONE]":
                return None
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            return "(not JSON)"
        return body["error"]["code"] if "error" in body else None


def ask(url: str, key: str, model: str, *, what: str, phase: str, stream: bool = False) -> Answer:
    """One request on a new connection, so both workers take some."""
    body = {"model": model, "messages": [{"role": "user", "content": f"question {next(_prompts)}"}], "stream": stream}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as response:
        text = response.read().decode()
    return Answer(what, phase, stream, response.status_code, response.headers, text)


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [(RuntimeError("a bug"), 500, "internal_error"), (Http404(), 404, "not_found"), (OperationalError(), 503, None)],
)
def test_what_no_view_handles_is_an_openai_error_with_a_request_id_never_django_s_page(failure, status, code):
    async def failing(request):
        raise failure

    response = asyncio.run(json_errors(failing)(RequestFactory().get("/v1/anything")))

    assert (response.status_code, response["content-type"]) == (status, "application/json")
    assert response["x-llmops-request-id"].startswith("req_")
    error = orjson.loads(response.content)["error"]
    assert error["code"] == (code or "service_unavailable") and error["message"]
    if status == 503:
        assert response["retry-after"] == "2"


SITE_PATHS = ["/admin/", "/admin/billing/usagerecord/", "/api/usage/?tenant=warm&since=2026-01-01&until=2026-01-31"]


def signed_in_session() -> str:
    """A superuser's session id, stored in the database the gateway reads its sessions from."""
    browser = Client()
    browser.force_login(UserFactory(is_staff=True, is_superuser=True))
    return browser.cookies["sessionid"].value


def site_answer(url: str, session_cookie: str, path: str) -> httpx.Response:
    with httpx.Client(base_url=url, cookies={"sessionid": session_cookie}, timeout=30) as client:
        return client.get(path)


@pytest.fixture
def process_env(process_env):
    return {**process_env, "LLMOPS_CACHE_EMBEDDER": ""}


def test_malformed_answers_and_a_postgres_outage_get_json_lose_no_row_and_leak_no_reservation(
    spawn, process_env, gateway_port, mock_upstream
):
    warm = make_tenant_setup(mock_upstream.url, slug="warm")
    budget = budget_create(tenant=warm.tenant, limit_usd=Decimal("5"), period="day")
    malformed = {}
    for kind in (*MALFORMED_USAGE, *MALFORMED_BODIES):
        # A provider each, so one kind's failures do not open the circuit for another.
        provider = ProviderFactory(name=f"malformed-{kind}", base_url=f"{mock_upstream.url}/v1")
        malformed[kind] = ModelFactory(name=f"warm-{kind}", provider=provider, upstream_name=f"mock-malformed-{kind}")
        warm.tenant.model_access.allowed_models.add(malformed[kind])
    # A tenant whose key no worker has seen: checking it needs the database. And a key nobody has.
    cold = make_tenant_setup(mock_upstream.url, slug="cold")
    unknown_key, _, _ = generate_key()
    start_gateway, start_drainer = spawn

    database = urlsplit(committed_database_url())
    with TcpProxy((database.hostname, database.port)) as proxy:
        process_env["DATABASE_URL"] = proxy.url_for(database.geturl())
        gateway = start_gateway(gateway_port, workers=2).start()
        start_drainer("faults").start()
        workers = TwoWorkers(gateway_port, gateway.process.pid)
        workers.served_by_both(warm.key, warm.small.name, status=200)
        url = workers.url
        session_cookie = signed_in_session()
        site_before = [site_answer(url, session_cookie, path) for path in SITE_PATHS]

        def round_of(phase: str, *, with_malformed: bool = False) -> list[Answer]:
            """Requests at once, each kind once (every malformed answer, when asked), until all are answered."""
            requests = [(warm.key, warm.small.name, "healthy", False), (warm.key, warm.small.name, "healthy", True)]
            requests += [(cold.key, cold.small.name, "cold", False)] if phase != "before" else []
            requests += [(unknown_key, warm.small.name, "unknown", False)]
            if with_malformed:
                requests += [(warm.key, malformed[kind].name, "malformed", stream) for kind, stream in MALFORMED]
            futures = [
                pool.submit(ask, url, key, model, what=what, phase=phase, stream=stream)
                for key, model, what, stream in requests
            ]
            return [future.result() for future in futures]

        with ThreadPoolExecutor(max_workers=8 + len(SITE_PATHS)) as pool:
            answers = round_of("before", with_malformed=True)
            with proxy.outage():
                deadline = time.monotonic() + OUTAGE_SECONDS
                answers += round_of("during", with_malformed=True)
                rounds = 1
                # At once, each answered within DB_POOL_TIMEOUT, well inside the outage.
                site_during = [pool.submit(site_answer, url, session_cookie, path) for path in SITE_PATHS]
                # At least three rounds however slow the machine: the outage lasts until they are answered.
                while time.monotonic() < deadline or rounds < 3:
                    answers += round_of("during")
                    rounds += 1
            site_during = [future.result() for future in site_during]
            # Each worker's pool reconnects with backoff once Postgres is back: a key that needs the database is
            # answered 503 until then, and 200 from the first round after.
            outage_ended = time.monotonic()
            recovered_by = outage_ended + RECOVERY_SECONDS
            after = round_of("after")
            while any(answer.status == 503 for answer in after) and time.monotonic() < recovered_by:
                answers += after
                after = round_of("after")
            answers += after
            recovery_seconds = time.monotonic() - outage_ended
        wait_for_empty_stream()

    print(
        f"{len(answers)} answers, {rounds} rounds of requests during the {OUTAGE_SECONDS} s outage,"
        f" all answered again {recovery_seconds:.1f} s after it:",
        {(a.what, a.status, a.error_code) for a in answers},
    )
    for answer in answers:
        assert answer.status != 500 and "<html" not in answer.text.lower(), answer
        assert answer.request_id.startswith("req_"), answer
        assert answer.headers["content-type"].startswith(("application/json", "text/event-stream")), answer
    expected = {
        "healthy": {(200, None)},
        "malformed": {(200, "upstream_invalid_response"), (502, "upstream_invalid_response")},
        "cold": {(503, "service_unavailable")},
        "unknown": {(401, "invalid_api_key"), (503, "service_unavailable")},
    }
    for answer in answers:
        if answer.what == "cold" and answer.phase == "after":
            assert (answer.status, answer.error_code) in {(200, None), (503, "service_unavailable")}, answer
        else:
            assert (answer.status, answer.error_code) in expected[answer.what], answer
        if answer.status == 503:
            assert answer.headers["retry-after"] == "2"
    assert all(answer.status in (200, 401) for answer in after), after

    # The admin and the management API answer 503 with Retry-After while the database is away: JSON under /api/.
    assert [response.status_code for response in site_before] == [200] * len(SITE_PATHS)
    for path, response in zip(SITE_PATHS, site_during, strict=True):
        assert response.status_code == 503, (path, response.status_code, response.headers, response.text[:300])
        assert response.headers["retry-after"] == "2", (path, response.headers)
        if path.startswith("/api/"):
            assert response.json()["error"]["code"] == "service_unavailable"
        else:
            assert "<html" not in response.text.lower()

    # Every request whose key was checked has its row; a key that could not be checked (the configuration could not
    # load) has none.
    rows = {row.request_id: row for row in UsageRecord.objects.unscoped().all()}
    for answer in answers:
        if answer.what == "unknown" or answer.error_code == "service_unavailable":
            assert answer.request_id not in rows
            continue
        row = rows.pop(answer.request_id)
        assert row.error_code == (answer.error_code or ""), answer
        assert row.cost_usd >= 0
        if answer.what == "malformed":
            assert (row.http_status, row.usage_estimated) == (502, True) and row.prompt_tokens > 0, answer
    now = timezone.now()
    assert budget_status(budget=budget, now=now).reserved_usd == 0
    check = budget_counter_check(budget=budget, now=now)
    assert check.counted_usd == check.ledger_usd
