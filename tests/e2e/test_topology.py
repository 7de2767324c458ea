"""The production topology, driven only through its public interfaces: the openai SDK, HTTP, the admin's HTTP
endpoints and management commands. Tests run in file order on one topology (see conftest.py)."""

import csv
import io
import json
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from billing.alerts.tasks import ALERT_RETRY_BASE_SECONDS
from tests.e2e.conftest import BEAT_INTERVAL_SECONDS, CLOUDWATCH_NAMESPACE, STATEMENTS_BUCKET, usage_total, wait_for

BATCH_TERMINAL = {"completed", "failed", "expired", "cancelled"}
HOUR_END_MARGIN_SECONDS = 60
DUPLICATE_GRACE_SECONDS = 2


def _today() -> datetime:
    return datetime.now(UTC)


def _days_around_today():
    today = _today().date()
    return today - timedelta(days=1), today


def _chat(topology, key: str, content: str, **headers) -> httpx.Response:
    return httpx.post(
        f"{topology.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", "x-llmops-cache": "bypass", **headers},
        json={"model": "mock-small", "messages": [{"role": "user", "content": content}]},
        timeout=30,
    )


def _ledger_has(demo, request_ids: set[str]) -> dict[str, dict] | None:
    since, until = _days_around_today()
    ledger = demo["admin"].ledger(since=since, until=until)
    return ledger if request_ids <= ledger.keys() else None


def test_a_batch_through_the_sdk_completes_and_its_cost_is_its_ledger_rows(topology, demo):
    lines = [
        {
            "custom_id": f"line-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "mock-small", "messages": [{"role": "user", "content": f"e2e batch question {index}"}]},
        }
        for index in range(5)
    ]
    with OpenAI(base_url=f"{topology.url}/v1", api_key=demo["key"], max_retries=0, timeout=30) as client:
        upload = client.files.create(
            file=("e2e.jsonl", "\n".join(json.dumps(line) for line in lines).encode()), purpose="batch"
        )
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = wait_for(
            lambda: (found := client.batches.retrieve(batch.id)).status in BATCH_TERMINAL and found,
            timeout=60,
            what=f"batch {batch.id} finishes",
            interval=0.5,
        )
        assert batch.status == "completed", batch
        assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 0)
        output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]

    assert sorted(row["custom_id"] for row in output) == [line["custom_id"] for line in lines]
    assert {row["response"]["status_code"] for row in output} == {200}
    request_ids = {row["response"]["request_id"] for row in output}
    ledger = wait_for(lambda: _ledger_has(demo, request_ids), timeout=30, what="the batch's rows are in the ledger")
    ledger_cost = sum((Decimal(ledger[request_id]["cost_usd"]) for request_id in request_ids), Decimal(0))
    assert ledger_cost > 0
    assert Decimal(batch.model_extra["llmops"]["cost_usd"]) == ledger_cost


def test_an_async_export_completes_and_sums_to_the_ledger(topology, demo):
    until = _today().date()
    since = until - timedelta(days=29)
    admin = demo["admin"]
    created = admin.post_json(
        "/api/usage/exports/", {"tenant": "demo", "since": since.isoformat(), "until": until.isoformat()}
    )
    assert created.status_code == 202, created.text
    status_url = created.json()["status_url"]
    done = wait_for(
        lambda: (status := admin.get(status_url).json())["status"] == "done" and status,
        timeout=30,
        what="the async export is written by the worker",
    )
    rows = list(csv.DictReader(io.StringIO(admin.get(done["download_url"]).text)))
    total = usage_total(topology, since=since, until=until)
    # The export lists every ledger row; the usage report is product usage: its requests, and every row's cost but
    # the shadow evaluations' (the demo history has some), which are the tenant's evaluation spend.
    assert sum(row["kind"] == "request" for row in rows) == total["requests"] > 0
    product = [row for row in rows if row["kind"] != "evaluation"]
    assert len(product) < len(rows)
    assert sum((Decimal(row["cost_usd"]) for row in product), Decimal(0)) == Decimal(total["cost_usd"])


def _dashboard_kpis(admin, day) -> dict[str, str]:
    page = admin.get("/admin/billing/usagerecord/finance/dashboard/", since=day.isoformat(), until=day.isoformat()).text
    return dict(re.findall(r'id="kpi-([a-z0-9-]+)"><span class="label">[^<]*</span><span class="value">([^<]*)<', page))


def _ledger_day(admin, day) -> dict:
    (total,) = admin.usage(since=day, until=day, group_by="day")
    return total


def test_the_dashboard_equals_the_ledger_within_one_refresh_interval(topology, demo):
    answers = [_chat(topology, demo["key"], f"dashboard question {uuid.uuid4()}") for _ in range(5)]
    assert {answer.status_code for answer in answers} == {200}
    request_ids = {answer.headers["x-llmops-request-id"] for answer in answers}
    wait_for(lambda: _ledger_has(demo, request_ids), timeout=30, what="the requests are in the ledger")
    today = _today().date()
    admin = demo["admin"]
    ledger = _ledger_day(admin, today)
    spend = Decimal(ledger["cost_usd"]).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)

    def dashboard_matches_ledger():
        kpis = _dashboard_kpis(admin, today)
        return kpis.get("requests") == str(ledger["requests"]) and kpis.get("spend") == f"{spend:f}"

    wait_for(dashboard_matches_ledger, timeout=2 * BEAT_INTERVAL_SECONDS + 5, what="the dashboard equals the ledger")
    assert _ledger_day(admin, today) == ledger, "the ledger moved under the comparison"


def _received(receiver, kind: str) -> list[dict]:
    with receiver.lock:
        bodies = [json.loads(request.body) for request in receiver.received]
    return [body for body in bodies if body.get("type") == kind]


@pytest.fixture(scope="module")
def webhook_channel(demo, webhook_receiver) -> int:
    """The demo tenant's signed webhook channel to the local receiver, added in the admin; its id."""
    admin = demo["admin"]
    page = admin.get("/admin/billing/alertchannel/add/").text
    tenant_id = re.search(r'<option value="(\d+)">demo</option>', page)[1]
    created = admin.post_form(
        "/admin/billing/alertchannel/add/",
        {
            "tenant": tenant_id,
            "name": "e2e webhook",
            "kind": "webhook",
            "target": f"{webhook_receiver.url}/alerts",
            "signing_secret": "e2e-secret",
            "is_active": "on",
        },
    )
    assert created.status_code == 302, created.text[:2000]
    channels = admin.get("/admin/billing/alertchannel/").text
    return int(re.search(r"/admin/billing/alertchannel/(\d+)/change/", channels)[1])


def test_a_budget_alert_reaches_the_webhook_once(topology, demo, webhook_receiver, webhook_channel):
    admin = demo["admin"]
    printed = topology.manage("create_api_key", "--tenant", "demo", "--team", "support", "--name", "e2e budget key")
    key = re.search(r"llmops-[A-Za-z0-9]+-[A-Za-z0-9_-]+", printed)[0]
    budget = admin.post_json(
        "/api/budgets/",
        {
            "tenant": "demo",
            "scope": "key",
            "api_key": key.split("-")[1],
            "period": "day",
            "limit_usd": "0.0001",
            "thresholds": [50, 100],
            "action": "notify",
            "channels": [webhook_channel],
        },
    )
    assert budget.status_code == 201, budget.text

    # About 0.000017 USD a request: ten go past both thresholds, five more cross none.
    for index in range(10):
        assert _chat(topology, key, f"budget question {uuid.uuid4()} {index}").status_code == 200
    receiver = webhook_receiver.receiver
    # A delivery that fails is sent again 30 s later (alert_retry_countdown): that still arrives once.
    late = ALERT_RETRY_BASE_SECONDS + 15
    wait_for(lambda: len(_received(receiver, "budget.threshold")) >= 2, timeout=late, what="both budget alerts arrive")
    for index in range(5):
        assert _chat(topology, key, f"more budget question {uuid.uuid4()} {index}").status_code == 200
    alerts = _received(receiver, "budget.threshold")
    assert sorted(alert["threshold_percent"] for alert in alerts) == [50, 100], alerts
    assert {alert["budget"]["id"] for alert in alerts} == {budget.json()["id"]}


def _error_burst(topology, key: str, count: int) -> set[str]:
    """An app shipped with a mistyped model name: every request answers 404 and leaves its ledger row."""

    def ask(client: httpx.Client, index: int) -> httpx.Response:
        return client.post(
            f"{topology.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mock-smal", "messages": [{"role": "user", "content": f"typo {index}"}]},
        )

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda index: ask(client, index), range(count)))
    assert {answer.status_code for answer in answers} == {404}
    assert {answer.json()["error"]["code"] for answer in answers} == {"model_not_found"}
    return {answer.headers["x-llmops-request-id"] for answer in answers}


def _anomaly_alerts(receiver, window_end: datetime) -> Counter:
    """How many times each anomaly of the windows ending at window_end reached the webhook."""
    return Counter(
        alert["anomaly_id"]
        for alert in _received(receiver, "anomaly")
        if datetime.fromisoformat(alert["window_end"]) == window_end
    )


def test_an_anomaly_alert_reaches_the_webhook_once(topology, demo, webhook_receiver, webhook_channel):
    now = _today()
    hour_end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if hour_end - now < timedelta(seconds=HOUR_END_MARGIN_SECONDS):
        # The burst and the run must fall in one hour; beat judges the hour itself once it has ended.
        time.sleep((hour_end - now).total_seconds() + 1)
        hour_end += timedelta(hours=1)
    # The demo's history fails about 1.6% of 150 to 500 requests a day, so the day's error rate pages from about 12%
    # (5 x the 0.02 floor above the median): 120 errors reach it up to some 880 requests in the day. In busy hours
    # the hour window is judged too.
    request_ids = _error_burst(topology, demo["key"], 120)
    wait_for(lambda: _ledger_has(demo, request_ids), timeout=30, what="the errors are in the ledger")

    # The hour in progress, judged before it ends, as an operator checks it.
    output = topology.manage("anomalies_detect", "--tenant", "demo", "--at", hour_end.isoformat())
    found = dict(re.findall(r"^  anomaly (\d+): (.+)$", output, re.MULTILINE))
    assert f"tenant, error rate spike in the day to {hour_end.isoformat()}" in "\n".join(found.values()), output
    alerted = {int(pk) for pk, line in found.items() if line.endswith("alerted to 1 channel")}
    assert alerted, output
    receiver = webhook_receiver.receiver
    wait_for(
        lambda: _anomaly_alerts(receiver, hour_end).keys() >= alerted,
        timeout=30,
        what="every alerted anomaly reaches the webhook",
    )

    again = topology.manage("anomalies_detect", "--tenant", "demo", "--at", hour_end.isoformat())
    assert "demo: 0 new anomalies" in again, again
    # Nothing was queued by the second run; a duplicate of the first would have arrived with the others.
    time.sleep(DUPLICATE_GRACE_SECONDS)
    assert _anomaly_alerts(receiver, hour_end) == Counter(dict.fromkeys(alerted, 1))


def test_last_months_statement_lands_in_s3_and_equals_the_ledger(topology, demo, aws):
    last_month = (_today().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    key = f"statements/demo/{last_month:%Y-%m}.csv"

    def statement():
        listed = aws["s3"].list_objects_v2(Bucket=STATEMENTS_BUCKET, Prefix=key)
        return listed.get("KeyCount") and aws["s3"].get_object(Bucket=STATEMENTS_BUCKET, Key=key)["Body"].read()

    body = wait_for(statement, timeout=4 * BEAT_INTERVAL_SECONDS + 20, what=f"s3://{STATEMENTS_BUCKET}/{key}")
    total_row = next(row for row in csv.reader(io.StringIO(body.decode())) if row and row[0] == "total")
    until = _today().date().replace(day=1) - timedelta(days=1)
    groups = demo["admin"].usage(since=last_month, until=until, group_by="team")
    assert int(total_row[3]) == sum(group["requests"] for group in groups)
    assert Decimal(total_row[7]) == sum((Decimal(group["cost_usd"]) for group in groups), Decimal(0))


def test_closed_hours_are_published_to_cloudwatch_once_and_equal_the_ledger(topology, demo, aws):
    cloudwatch = aws["cloudwatch"]

    def published_request_metrics():
        metrics = cloudwatch.list_metrics(Namespace=CLOUDWATCH_NAMESPACE, MetricName="Requests")["Metrics"]
        return [metric for metric in metrics if {"Name": "Tenant", "Value": "demo"} in metric["Dimensions"]]

    metrics = wait_for(published_request_metrics, timeout=4 * BEAT_INTERVAL_SECONDS + 20, what="metrics in CloudWatch")
    now = _today()
    dimension_sets = {tuple(sorted((item["Name"], item["Value"]) for item in m["Dimensions"])) for m in metrics}
    published: dict[datetime, float] = {}
    for dimensions in dimension_sets:
        points = cloudwatch.get_metric_statistics(
            Namespace=CLOUDWATCH_NAMESPACE,
            MetricName="Requests",
            Dimensions=[{"Name": name, "Value": value} for name, value in dimensions],
            StartTime=now - timedelta(days=2),
            EndTime=now,
            Period=3600,
            Statistics=["Sum"],
        )["Datapoints"]
        for point in points:
            published[point["Timestamp"]] = published.get(point["Timestamp"], 0) + point["Sum"]
    assert published, "no data points"
    # Only closed hours, each once (the publisher ran every few seconds): the ledger's count for each hour.
    ledger = demo["admin"].ledger(since=now.date() - timedelta(days=2), until=now.date())
    # Requests: not the calls the gateway made for them (compression summaries, shadow evaluations).
    created = [
        datetime.fromisoformat(row["created_at"]).astimezone(UTC) for row in ledger.values() if row["kind"] == "request"
    ]
    for hour, requests in published.items():
        assert hour + timedelta(hours=1) <= now
        assert requests == sum(1 for moment in created if hour <= moment < hour + timedelta(hours=1)), hour


def _uvicorn_workers(topology) -> list[int]:
    master = topology.processes["web"].pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    # uvicorn spawns its workers (multiprocessing's spawn_main); the resource tracker is the other child.
    return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]


def _server_socket_inodes(port: int) -> dict[int, int]:
    """The inodes of the server side of established loopback TCP connections to `port`, by client port."""
    inodes = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = (int(address.split(":")[1], 16) for address in fields[1:3])
        if local_port == port and fields[3] == "01":
            inodes[remote_port] = int(fields[9])
    return inodes


def _worker_of(topology, client: httpx.Client) -> int:
    """The uvicorn worker holding the client's (kept-alive) connection, found through the socket both sides share."""
    response = client.get("/readyz")
    client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    inode = _server_socket_inodes(int(topology.env["PORT"]))[client_port]
    for pid in _uvicorn_workers(topology):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError(f"no uvicorn worker holds the connection from port {client_port}")


def _clients_on_each_worker(topology) -> list[httpx.Client]:
    """One kept-alive client per uvicorn worker (the kernel hands new connections to either)."""
    clients: dict[int, httpx.Client] = {}
    for _ in range(40):
        client = httpx.Client(base_url=topology.url, timeout=30)
        worker = _worker_of(topology, client)
        if worker in clients:
            client.close()
        else:
            clients[worker] = client
        if len(clients) == 2:
            return list(clients.values())
    raise AssertionError("40 connections all went to one uvicorn worker")


def _semantic_entries(demo) -> int:
    """How many semantic cache entries the admin's cache entry list shows."""
    page = demo["admin"].get("/admin/routing/cacheentry/", kind__exact="semantic")
    assert page.status_code == 200, page.text[:500]
    return int(re.search(r"(\d+) cache entr(?:y|ies)\b", page.text).group(1))


def test_an_answer_cached_through_one_worker_is_a_semantic_hit_through_the_other_until_purged(topology, demo):
    """Each worker has read the cache before the answer is stored, as a busy gateway's would have: a per-process
    index would not see the other's entry until its next refresh."""
    first, second = _clients_on_each_worker(topology)

    def ask(client: httpx.Client, content: str, cache: str = "") -> str:
        response = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {demo['key']}", **({"x-llmops-cache": cache} if cache else {})},
            json={"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": content}]},
        )
        assert response.status_code == 200, response.text[:500]
        return response.headers["x-llmops-cache"]

    for client in (first, second):
        assert ask(client, f"e2e warm-up question {uuid.uuid4()}", cache="no-store") == "miss"
    stored_before = _semantic_entries(demo)
    assert ask(first, "What is the boiling point of water at sea level?") == "miss"
    # The first worker writes its entry after answering, off the response path: the second finds it once written.
    wait_for(lambda: _semantic_entries(demo) > stored_before, timeout=30, what="the first worker's cache entry")
    assert ask(second, "what's the boiling point of water at sea level", cache="no-store") == "hit-semantic"

    assert re.match(r"deleted [1-9]\d* cache entries of demo", topology.manage("cache_purge", "--tenant", "demo"))
    for client in (first, second):
        assert ask(client, "what's the boiling point of water at sea level", cache="no-store") == "miss"
        client.close()


def test_kill_9_of_a_gateway_worker_and_of_the_drainer_mid_load_loses_no_answered_request(topology, demo):
    """Kills happen on counts of answered requests, not on time: the assertion is exact, so no margin to tune."""
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            for index in range(400):
                if stop.is_set():
                    return
                try:
                    response = client.post(
                        f"{topology.url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {demo['key']}", "x-llmops-cache": "bypass"},
                        json={
                            "model": "mock-small",
                            "messages": [{"role": "user", "content": f"load {worker} {index}"}],
                        },
                    )
                except httpx.TransportError:
                    continue
                if response.status_code == 200:
                    with lock:
                        answered.append(response.headers["x-llmops-request-id"])

    def answered_at_least(count: int):
        return lambda: len(answered) >= count

    workers = _uvicorn_workers(topology)
    assert len(workers) == 2, workers
    with ThreadPoolExecutor(max_workers=6) as pool:
        loads = [pool.submit(load, worker) for worker in range(6)]
        try:
            wait_for(answered_at_least(50), timeout=60, what="50 answers before the kills", interval=0.01)
            os.kill(workers[0], signal.SIGKILL)
            wait_for(answered_at_least(100), timeout=60, what="answers after a gateway worker died", interval=0.01)
            topology.kill("drain")
            after_drainer_died = len(answered)
            wait_for(
                answered_at_least(after_drainer_died + 50),
                timeout=60,
                what="answers while no drainer runs",
                interval=0.01,
            )
            topology.start("drain")
            wait_for(answered_at_least(len(answered) + 50), timeout=60, what="answers after the restart", interval=0.01)
        finally:
            stop.set()
        for future in loads:
            future.result()

    request_ids = set(answered)
    assert len(request_ids) == len(answered) >= 200
    ledger = wait_for(
        lambda: _ledger_has(demo, request_ids), timeout=60, what="every answered request is in the ledger"
    )
    assert request_ids <= ledger.keys()
