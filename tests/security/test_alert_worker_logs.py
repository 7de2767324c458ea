"""A Slack webhook URL is a credential, and no Celery worker log line carries one: a failed alert delivery's retry is
logged with its error, which names the channel's URL masked, and goes through LOGGING's redacting handler, which the
worker keeps (CELERY_WORKER_HIJACK_ROOT_LOGGER) and which knows Slack's incoming webhook, trigger and workflow URLs."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal

import pytest
import redis
from django.conf import settings

from billing.alerts.services import alert_channel_create, budget_alert_raise
from billing.alerts.tasks import alert_delivery_send
from billing.budgets.services import budget_create
from billing.models import ChannelKind
from core.redaction import API_KEY, redact, secret_kinds_in
from tests.factories import TenantFactory
from tests.servers import ROOT, ThreadedServer, committed_database_url

CHANNEL_SECRET = "/services/T0ACME/B0ALERTS/ch4nn3lS3cr3tT0k3n"
# Slack URLs of each kind, in the answer of a failing endpoint: the error the worker logs quotes it.
SLACK_URLS = {
    "incoming webhook": "https://hooks.slack.com/services/T0ACME/B0HOOK/h00kS3cr3tT0k3n",
    "workflow trigger": "https://hooks.slack.com/triggers/T0ACME/7012345678/tr1gg3rS3cr3tT0k3n",
    "workflow webhook": "https://hooks.slack.com/workflows/T0ACME/A0FLOW/4012345678/w0rkfl0wS3cr3tT0k3n",
}


@pytest.mark.parametrize("url", SLACK_URLS.values(), ids=SLACK_URLS.keys())
def test_slack_webhook_urls_of_every_kind_are_redacted(url):
    assert redact(f"posting to {url} failed") == f"posting to {API_KEY} failed"
    assert secret_kinds_in(url) == [API_KEY]


@dataclass
class QuotingRefusal:
    """Answers 500 with a body that quotes Slack URLs, as a misconfigured relay might."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": " ".join(SLACK_URLS.values()).encode()})


@pytest.fixture
def broker(settings):
    """Tasks go to the test Redis, for the worker; none runs in this process."""
    from llmops.celery import app

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("celery")  # nothing a test before left queued
    previous = app.conf.broker_url, app.conf.task_always_eager
    app.conf.broker_url, app.conf.task_always_eager = settings.REDIS_URL, False
    yield app
    app.conf.broker_url, app.conf.task_always_eager = previous
    client.delete("celery")
    client.close()


@pytest.fixture
def worker_log(transactional_db, broker, tmp_path):
    """A Celery worker as the Procfile runs it (prefork) at INFO, on the test database and broker; its output."""
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": committed_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "LOG_LEVEL": "INFO",
    }
    args = [sys.executable, "-m", "celery", "-A", "llmops", "worker", "-Q", "celery", "--pool=prefork"]
    args += ["--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"]
    with log.open("wb") as output:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    yield log
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_for_line(log, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if text in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"no line with {text!r} in the worker's log within {timeout} s:\n{log.read_text()}")


def test_a_worker_retrying_a_slack_delivery_logs_no_slack_url(worker_log):
    with ThreadedServer(QuotingRefusal()) as endpoint:
        tenant = TenantFactory(slug="acme")
        channel = alert_channel_create(
            tenant=tenant, name="slack", kind=ChannelKind.SLACK, target=f"{endpoint.url}{CHANNEL_SECRET}"
        )
        budget = budget_create(tenant=tenant, limit_usd=Decimal("10"), channels=[channel], thresholds=[100])
        [delivery] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=100, spent_units=10**11)

        alert_delivery_send.delay(delivery.pk)
        retry = wait_for_line(worker_log, "retry:")

    # (The log filter masks the IP address too.)
    assert f":{endpoint.port}/{API_KEY} answered 500: {API_KEY} {API_KEY} {API_KEY}" in retry
    log = worker_log.read_text(errors="replace")
    assert CHANNEL_SECRET not in log
    assert not [url for url in SLACK_URLS.values() if url.rsplit("/", 1)[1] in log]
