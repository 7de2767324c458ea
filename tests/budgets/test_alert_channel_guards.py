"""What an alert channel may reach and hold: SNS topics only of the allowed AWS accounts and named for the channel's
tenant, a webhook, a mail server or an SNS endpoint that answers slowly, at length or not at all not holding the
worker, and no Slack webhook URL in the error a worker logs."""

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

import boto3
import httpx
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import ValidationError
from django.db import connection
from moto import mock_aws

from billing.alerts import channels
from billing.alerts.channels import ChannelSendError
from billing.alerts.services import (
    alert_channel_create,
    alert_channel_update,
    alert_delivery_attempt,
    budget_alert_raise,
)
from billing.alerts.tasks import alert_delivery_send
from billing.budgets.services import budget_create
from billing.models import AlertChannel, AlertDelivery, ChannelKind, DeliveryStatus
from core.outbound import OUTBOUND_ANSWER_MAX_BYTES, outbound_post
from tests.factories import TenantFactory
from tests.servers import ThreadedServer

UNITS = 10**10
ALLOWED_ACCOUNT, OTHER_ACCOUNT = "123456789012", "210987654321"  # moto's own account is allowed
SLACK_SECRET_PATH = "/services/T0ACME/B0ALERTS/s3cr3tW3bh00kT0k3n"


def topic_arn(account: str, name: str = "llmops-acme-alerts") -> str:
    return f"arn:aws:sns:eu-west-1:{account}:{name}"


def delivery_to(org, channel) -> AlertDelivery:
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[channel], thresholds=[100])
    [delivery] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=100, spent_units=10 * UNITS)
    return delivery


def failed_attempt(delivery: AlertDelivery) -> tuple[ChannelSendError, AlertDelivery]:
    with pytest.raises(ChannelSendError) as raised:
        alert_delivery_attempt(delivery_id=delivery.pk)
    return raised.value, AlertDelivery.objects.unscoped().get(pk=delivery.pk)


# SNS: only topics of the accounts the platform allows.


def test_sns_channels_are_refused_while_no_account_is_allowed(org, settings):
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = []
    with pytest.raises(ValidationError) as refused:
        alert_channel_create(tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=topic_arn(ALLOWED_ACCOUNT))
    assert "LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS" in refused.value.message_dict["target"][0]


def test_an_sns_topic_of_another_account_is_refused_on_create_and_on_edit(org, settings):
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    with pytest.raises(ValidationError) as refused:
        alert_channel_create(tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=topic_arn(OTHER_ACCOUNT))
    assert OTHER_ACCOUNT in refused.value.message_dict["target"][0]

    channel = alert_channel_create(
        tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=topic_arn(ALLOWED_ACCOUNT)
    )
    with pytest.raises(ValidationError):
        alert_channel_update(channel=channel, name="sns", target=topic_arn(OTHER_ACCOUNT), is_active=True)
    channel.refresh_from_db()
    assert channel.target == topic_arn(ALLOWED_ACCOUNT)


def test_the_admin_form_refuses_an_sns_topic_of_another_account(org, settings, admin_client):
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    form = {"tenant": org.tenant.pk, "name": "sns", "kind": ChannelKind.SNS, "is_active": "on", "signing_secret": ""}

    refused = admin_client.post("/admin/billing/alertchannel/add/", {**form, "target": topic_arn(OTHER_ACCOUNT)})
    allowed = admin_client.post("/admin/billing/alertchannel/add/", {**form, "target": topic_arn(ALLOWED_ACCOUNT)})

    assert refused.status_code == 200
    assert "LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS" in refused.context["adminform"].form.errors["target"][0]
    assert allowed.status_code == 302
    assert [channel.target for channel in AlertChannel.objects.for_tenant(org.tenant)] == [topic_arn(ALLOWED_ACCOUNT)]


@mock_aws
def test_an_sns_channel_whose_account_is_no_longer_allowed_publishes_nothing(org, settings):
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    sns, sqs = boto3.client("sns", region_name="eu-west-1"), boto3.client("sqs", region_name="eu-west-1")
    arn = sns.create_topic(Name="llmops-acme-alerts")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
    delivery = delivery_to(org, alert_channel_create(tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=arn))

    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [OTHER_ACCOUNT]
    _, failed = failed_attempt(delivery)

    assert "not allowed" in failed.last_error
    assert sqs.receive_message(QueueUrl=queue_url).get("Messages", []) == []


# SNS: only topics named for the channel's tenant, llmops-<tenant slug>-<name>: the allowed accounts hold the
# platform's own topics and every tenant's.


@pytest.mark.parametrize("name", ["llmops-globex-alerts", "platform-oncall", "llmops-acmecorp-alerts", "llmops-acme-"])
def test_an_sns_topic_not_named_for_the_tenant_is_refused(org, settings, name):
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    with pytest.raises(ValidationError) as refused:
        alert_channel_create(
            tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=topic_arn(ALLOWED_ACCOUNT, name)
        )
    assert refused.value.message_dict["target"] == [
        f"Topic {name} is not named for tenant acme: its alert topics are named llmops-acme-<name>."
    ]


def test_an_sns_channel_cannot_be_moved_to_another_tenants_topic(org, settings):
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    channel = alert_channel_create(
        tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=topic_arn(ALLOWED_ACCOUNT)
    )
    with pytest.raises(ValidationError, match="llmops-acme-<name>"):
        alert_channel_update(
            channel=channel, name="sns", target=topic_arn(ALLOWED_ACCOUNT, "llmops-globex-alerts"), is_active=True
        )
    channel.refresh_from_db()
    assert channel.target == topic_arn(ALLOWED_ACCOUNT)


def test_a_topic_named_for_a_tenant_whose_slug_extends_the_tenants_is_that_tenants_only(org, settings):
    """Slugs hold hyphens: llmops-acme-corp-alerts begins with acme's prefix, but is tenant acme-corp's topic."""
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    acme_corp = TenantFactory(slug="acme-corp")
    corp_topic = topic_arn(ALLOWED_ACCOUNT, "llmops-acme-corp-alerts")

    with pytest.raises(ValidationError) as refused:
        alert_channel_create(tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=corp_topic)
    corp_channel = alert_channel_create(tenant=acme_corp, name="sns", kind=ChannelKind.SNS, target=corp_topic)
    billing_topic = topic_arn(ALLOWED_ACCOUNT, "llmops-acme-billing-alerts")  # no tenant acme-billing
    acme_channel = alert_channel_create(tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=billing_topic)

    assert refused.value.message_dict["target"] == [
        "Topic llmops-acme-corp-alerts is named for another tenant: choose another name after llmops-acme-."
    ]
    assert (corp_channel.target, acme_channel.target) == (corp_topic, billing_topic)


def test_the_admin_form_refuses_a_topic_not_named_for_the_channels_tenant(org, settings, admin_client):
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    form = {"tenant": org.tenant.pk, "name": "sns", "kind": ChannelKind.SNS, "is_active": "on", "signing_secret": ""}

    refused = admin_client.post(
        "/admin/billing/alertchannel/add/", {**form, "target": topic_arn(ALLOWED_ACCOUNT, "llmops-globex-alerts")}
    )

    assert refused.status_code == 200
    assert "llmops-acme-<name>" in refused.context["adminform"].form.errors["target"][0]
    assert not AlertChannel.objects.for_tenant(org.tenant).exists()


@mock_aws
def test_an_sns_channel_saved_before_topics_were_named_for_tenants_publishes_nothing(
    org, settings, caplog, monkeypatch
):
    """Saved when any topic of an allowed account would do: each send fails, saying which name the topic needs, and
    the worker warns once."""
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    monkeypatch.setattr(channels, "_sns_refusals_warned", set())
    sns, sqs = boto3.client("sns", region_name="eu-west-1"), boto3.client("sqs", region_name="eu-west-1")
    platform_topic = sns.create_topic(Name="llmops-oncall")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="oncall-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=platform_topic, Protocol="sqs", Endpoint=queue_arn)
    channel = AlertChannel.objects.create(tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=platform_topic)
    delivery = delivery_to(org, channel)

    with caplog.at_level(logging.WARNING, logger="billing.alerts.channels"):
        failed_attempt(delivery)
        _, failed = failed_attempt(delivery)

    assert failed.attempts == 2
    assert failed.last_error == (
        f"SNS topic {platform_topic} refused: Topic llmops-oncall is not named for tenant acme: its alert topics are "
        "named llmops-acme-<name>."
    )
    [warning] = [record for record in caplog.records if record.name == "billing.alerts.channels"]
    assert f"(id {channel.pk}) publishes nothing" in warning.getMessage()
    assert "llmops-acme-<name>" in warning.getMessage()
    assert sqs.receive_message(QueueUrl=queue_url).get("Messages", []) == []


# SNS: a publish that hangs ends before the send task's time limit, and one the limit cuts is a failed attempt.


@mock_aws
def test_an_sns_publish_gives_up_before_the_send_task_is_cut(org, settings, monkeypatch):
    """The client's connect and read timeouts, times its tries, end inside the task's soft time limit: botocore's
    defaults (60 s each, 5 tries) outlast it."""
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    boto3.client("sns", region_name="eu-west-1").create_topic(Name="llmops-acme-alerts")
    clients, make_client = [], boto3.client

    def recording_client(*args, **kwargs):
        clients.append(make_client(*args, **kwargs))
        return clients[-1]

    monkeypatch.setattr(boto3, "client", recording_client)
    channel = alert_channel_create(
        tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=topic_arn(ALLOWED_ACCOUNT)
    )
    alert_delivery_attempt(delivery_id=delivery_to(org, channel).pk)

    [client] = clients
    config = client.meta.config
    tries = (config.retries or {}).get("total_max_attempts", 3)  # 3: the default of botocore's standard retry mode
    assert (config.connect_timeout + config.read_timeout) * tries < alert_delivery_send.soft_time_limit


def test_an_sns_send_cut_by_the_soft_time_limit_is_a_failed_attempt(org, settings, monkeypatch):
    """At soft_time_limit the prefork pool raises SoftTimeLimitExceeded in the task from a signal handler; here 1 s
    after the publish is sent, into an endpoint that never answers (botocore would take it for a network error and
    try again).
    Recorded as a failed attempt, the send is retried and in the end marked failed, not left pending with no attempt
    for the sweep to queue again every 5 minutes."""
    settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = [ALLOWED_ACCOUNT]
    channel = alert_channel_create(
        tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=topic_arn(ALLOWED_ACCOUNT)
    )
    delivery = delivery_to(org, channel)

    def soft_time_limit(signum, frame):
        raise SoftTimeLimitExceeded()

    made = channels._sns_client

    def arm(**kwargs) -> None:  # before-send: a handler's return value would be taken for the answer
        signal.setitimer(signal.ITIMER_REAL, 1)

    def client_timed_from_its_send(region: str):
        # The limit runs from the publish's send: a client made slowly on a busy machine would otherwise take the
        # signal, and the send would wait out its read timeout.
        client = made(region)
        client.meta.events.register("before-send.sns", arm)
        return client

    monkeypatch.setattr(channels, "_sns_client", client_timed_from_its_send)
    with raw_tcp_server(say_nothing) as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        previous = signal.signal(signal.SIGALRM, soft_time_limit)
        try:
            raised, failed = failed_attempt(delivery)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    assert (failed.status, failed.attempts) == (DeliveryStatus.PENDING, 1)
    assert failed.last_error == f"the send to {topic_arn(ALLOWED_ACCOUNT)} outlasted the send task's time limit"
    assert str(raised) == failed.last_error


# Webhooks: a deadline on the whole send, and only the start of the answer read.


@dataclass
class TricklingAnswer:
    """Answers 200 at once, then its body a byte every `interval` seconds: each read is quick, the whole is not."""

    interval: float = 0.2
    length: int = 100

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(self.length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(self.length):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(self.interval)
        await send({"type": "http.response.body", "body": b""})


@dataclass
class HugeAnswer:
    """Answers 500 with a 64 MB body, far more than socket buffers hold, and notes whether it got to send it all."""

    length: int = 64 * 1024 * 1024
    chunk: bytes = b"e" * 65536
    sent_it_all: bool | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(self.length).encode())]
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        client_left = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            client_left.set()

        watcher = asyncio.create_task(watch())
        sent = 0
        while sent < self.length and not client_left.is_set():
            await send({"type": "http.response.body", "body": self.chunk, "more_body": True})
            sent += len(self.chunk)
            await asyncio.sleep(0)  # lets the watcher see the client leave
        self.sent_it_all = not client_left.is_set()
        if self.sent_it_all:
            await send({"type": "http.response.body", "body": b""})
        watcher.cancel()


@contextmanager
def raw_tcp_server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A loopback port whose connections `handle` serves byte by byte; they are closed when the block ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop, connections = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connections.append(connection)
            threading.Thread(target=handle, args=(connection, stop), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join()
        listener.close()
        for connection in connections:
            connection.close()


def trickle_the_status_line(connection: socket.socket, stop: threading.Event) -> None:
    connection.recv(65536)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        if stop.wait(0.2):
            return
        connection.sendall(bytes([byte]))


def say_nothing(connection: socket.socket, stop: threading.Event) -> None:
    stop.wait()


def test_a_webhook_trickling_its_answer_is_cut_at_the_deadline():
    with ThreadedServer(TricklingAnswer()) as server:
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException, match="within 2 s"):
            outbound_post(f"{server.url}/hook", content=b"{}", headers={}, timeout=1, deadline=2)
        assert time.monotonic() - started < 5  # the 20 s answer was not waited for


def test_a_webhook_trickling_its_status_line_is_cut_at_the_deadline():
    with raw_tcp_server(trickle_the_status_line) as port, pytest.raises(httpx.TimeoutException, match="within 2 s"):
        outbound_post(f"http://127.0.0.1:{port}/hook", content=b"{}", headers={}, timeout=1, deadline=2)


def test_an_alert_to_a_trickling_webhook_fails_at_the_send_deadline(org, monkeypatch):
    monkeypatch.setattr(channels, "SEND_DEADLINE_SECONDS", 2)
    with ThreadedServer(TricklingAnswer()) as server:
        channel = alert_channel_create(
            tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{server.url}/slack"
        )
        _, failed = failed_attempt(delivery_to(org, channel))
    assert "no complete answer within 2 s" in failed.last_error


def test_only_the_start_of_a_huge_answer_is_read():
    app = HugeAnswer()
    with ThreadedServer(app) as server:
        answer = outbound_post(f"{server.url}/hook", content=b"{}", headers={}, timeout=5)
    assert answer.status_code == 500
    assert answer.text == "e" * OUTBOUND_ANSWER_MAX_BYTES
    assert app.sent_it_all is False


def test_an_alert_to_a_webhook_answering_at_length_fails_with_the_start_of_it(org):
    app = HugeAnswer()
    with ThreadedServer(app) as server:
        channel = alert_channel_create(
            tenant=org.tenant, name="hook", kind=ChannelKind.WEBHOOK, target=f"{server.url}/hook", signing_secret="s"
        )
        _, failed = failed_attempt(delivery_to(org, channel))
    assert failed.last_error.startswith(f"POST {server.url}/hook answered 500: eeee")
    assert len(failed.last_error) < 400
    assert app.sent_it_all is False


def test_an_email_alert_to_a_mail_server_that_never_answers_fails(live_org, settings):
    """EMAIL_TIMEOUT (10 s) bounds the SMTP connection: without it the send waits for the greeting for ever."""
    channel = alert_channel_create(
        tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="ops@example.com"
    )
    delivery = delivery_to(live_org, channel)
    outcome: dict[str, Exception | None] = {}

    def attempt() -> None:
        try:
            alert_delivery_attempt(delivery_id=delivery.pk)
        except Exception as exc:
            outcome["raised"] = exc
        else:
            outcome["raised"] = None
        finally:
            connection.close()

    with raw_tcp_server(say_nothing) as port:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        # In a thread, so a send that never gives up fails the test instead of hanging it.
        sender = threading.Thread(target=attempt, daemon=True)
        sender.start()
        sender.join(timeout=20)
        gave_up = not sender.is_alive()
    sender.join(timeout=5)

    assert gave_up, "the email send was still waiting for the mail server after 20 s"
    assert isinstance(outcome["raised"], ChannelSendError)
    assert "timed out" in str(outcome["raised"])


# A Slack webhook URL is a credential: the error raised (which the worker logs on retry) carries it masked.


def test_the_error_raised_for_a_failed_slack_send_carries_the_url_masked(org, receiver):
    app, url = receiver
    app.statuses.append(500)
    channel = alert_channel_create(
        tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}{SLACK_SECRET_PATH}"
    )

    raised, failed = failed_attempt(delivery_to(org, channel))

    chain, error = [], raised
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert all(SLACK_SECRET_PATH not in str(error) and SLACK_SECRET_PATH not in repr(error) for error in chain)
    assert str(raised) == failed.last_error
    assert str(raised).startswith(f"POST {url}/[API_KEY] answered 500")
    assert json.loads(app.received[0].body)["text"]
