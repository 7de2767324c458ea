import ipaddress
import socket

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.urls import reverse

from billing.alerts.channels import ChannelSendError, channel_send
from billing.alerts.services import alert_channel_create
from billing.models import AlertChannel, ChannelKind
from core.outbound import allowed_destination_parse, outbound_url_errors
from llmops.gateway.batches.models import Job, JobStatus, WebhookState
from llmops.gateway.errors import GatewayError
from llmops.gateway.jobs.services import (
    CALLBACK_URL_REFUSED,
    WEBHOOK_UNREACHABLE,
    WebhookDeliveryError,
    job_create,
    job_payload,
    job_webhook_attempt,
    job_webhook_give_up,
)
from routing.models import Provider
from routing.services import provider_create
from tenants.authentication import build_key_index
from tenants.services import api_key_create
from tests.factories import TeamFactory, TenantFactory, UserFactory
from tests.servers import ReceivedRequest, Receiver, ThreadedServer, free_port

REFUSED_ALWAYS = [
    "ftp://api.example.com/v1",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://user:pass@api.example.com/v1",
    "http:///no-host",
    "http://api.example.com:99999/",
]
REFUSED_UNLESS_PRIVATE_ALLOWED = [
    "http://127.0.0.1:9100/v1",
    "http://localhost/v1",
    "http://10.0.0.5/v1",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://[::1]/v1",
    "http://[::ffff:127.0.0.1]/v1",
    "http://0.0.0.0/",
    "http://100.64.0.1/",
    "http://169.254.1.1/",
]
ALLOWED = ["https://api.openai.com/v1", "https://8.8.8.8/v1", "http://[2606:4700:4700::1111]/"]


@pytest.mark.parametrize("url", REFUSED_ALWAYS)
@pytest.mark.parametrize("allow_private", [True, False])
def test_bad_schemes_credentials_and_metadata_are_always_refused(url, allow_private):
    assert outbound_url_errors(url, allow_private=allow_private)


@pytest.mark.parametrize("url", REFUSED_UNLESS_PRIVATE_ALLOWED)
def test_internal_addresses_need_the_explicit_setting(url):
    assert outbound_url_errors(url, allow_private=False)
    assert outbound_url_errors(url, allow_private=True) == []


@pytest.mark.parametrize("url", ALLOWED)
def test_public_addresses_pass(url):
    assert outbound_url_errors(url, allow_private=False) == []


@pytest.mark.django_db
def test_provider_create_and_alert_channels_apply_the_check(settings):
    settings.LLMOPS_ALLOW_PRIVATE_UPSTREAMS = False
    with pytest.raises(ValidationError) as provider_error:
        provider_create(name="internal", base_url="http://127.0.0.1:9100/v1")
    assert "base_url" in provider_error.value.message_dict
    with pytest.raises(ValidationError) as channel_error:
        alert_channel_create(
            tenant=TenantFactory(), name="x", kind="slack", target="http://169.254.169.254/latest/meta-data/"
        )
    assert "target" in channel_error.value.message_dict
    assert provider_create(name="public", base_url="https://api.openai.com/v1").pk


@pytest.mark.django_db
def test_the_provider_admin_form_refuses_a_metadata_url(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.post(
        reverse("admin:routing_provider_add"),
        {"name": "meta", "kind": "openai", "base_url": "http://169.254.169.254/v1", "timeout_seconds": "5"},
    )
    assert response.status_code == 200 and b"metadata" in response.content
    assert not Provider.objects.filter(name="meta").exists()


# Job callbacks: a tenant-given URL that the Celery worker POSTs to. The same check as provider and webhook URLs when
# the job is created, and again when the webhook is sent (the name may resolve elsewhere by then), connecting to the
# address that was checked and never following a redirect.
INTERNAL_ENCODINGS = [
    "http://2130706433:6379/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://127.1:9100/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
]
CALLBACK_FORMS = REFUSED_ALWAYS + REFUSED_UNLESS_PRIVATE_ALLOWED + INTERNAL_ENCODINGS


@pytest.fixture
def strict(settings):
    """Production's setting (LLMOPS_HTTPS=true): no private destinations unless allow-listed."""
    settings.LLMOPS_ALLOW_PRIVATE_UPSTREAMS = False
    settings.LLMOPS_OUTBOUND_ALLOWLIST = []
    return settings


@pytest.fixture
def principal(db):
    team = TeamFactory()
    api_key, _ = api_key_create(team=team)
    return build_key_index(tenant_id=team.tenant_id)[api_key.prefix]


@pytest.fixture
def loopback_only(monkeypatch):
    """A send-time check that failed must not reach beyond this machine: connections leave only for loopback."""
    create_connection = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert ipaddress.ip_address(socket.gethostbyname(address[0])).is_loopback, f"tried to connect to {address}"
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


class RedirectingReceiver(Receiver):
    """Answers every request with a redirect to `location`."""

    def __init__(self, location: str):
        super().__init__()
        self.location = location

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        self.received.append(ReceivedRequest(scope["path"], {}, b""))
        headers = [(b"location", self.location.encode())]
        await send({"type": "http.response.start", "status": 307, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _finished_job(principal, callback_url: str) -> Job:
    return Job.objects.create(
        tenant_id=principal.tenant_id,
        team_id=principal.team_id,
        api_key_id=principal.key_id,
        body={},
        status=JobStatus.COMPLETED,
        callback_url=callback_url,
        webhook_state=WebhookState.PENDING,
    )


def _deliver(job: Job) -> Job:
    """The webhook task's work: one attempt; a failed one gives up as the last retry would."""
    try:
        job_webhook_attempt(job_id=job.id)
    except WebhookDeliveryError:
        job_webhook_give_up(job_id=job.id)
    job.refresh_from_db()
    return job


@pytest.mark.parametrize("url", CALLBACK_FORMS)
def test_a_job_callback_to_an_internal_or_bad_url_is_refused_at_creation(strict, principal, url):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "callback_url": url}
    with pytest.raises(GatewayError) as refused:
        job_create(principal=principal, body=body)
    assert (refused.value.status_code, refused.value.param) == (400, "callback_url")
    assert refused.value.code == "invalid_value"
    # One message for every reason, so the answer does not say how a name resolves inside the installation.
    assert refused.value.message == CALLBACK_URL_REFUSED
    assert not Job.objects.unscoped().exists()


@pytest.mark.parametrize("url", CALLBACK_FORMS)
def test_a_callback_that_is_internal_when_sent_is_never_called(strict, principal, loopback_only, receiver, url):
    """As if the URL had passed at creation and its name resolved to an internal address since (DNS rebinding).
    The loopback forms point at a live receiver, which must hear nothing."""
    url = url.replace(":9100", f":{receiver.port}").replace(":6379", f":{receiver.port}")
    job = _deliver(_finished_job(principal, url))
    assert receiver.app.received == []
    assert (job.webhook_state, job.webhook_attempts, job.webhook_last_error) == (
        WebhookState.FAILED,
        1,
        WEBHOOK_UNREACHABLE,
    )


def test_a_refused_callback_reads_like_an_unreachable_one(strict, principal):
    closed = free_port()
    strict.LLMOPS_OUTBOUND_ALLOWLIST = [f"127.0.0.1:{closed}"]
    refused = _deliver(_finished_job(principal, "http://10.0.0.5/hook"))
    unreachable = _deliver(_finished_job(principal, f"http://127.0.0.1:{closed}/hook"))
    assert job_payload(refused)["webhook"] == job_payload(unreachable)["webhook"]
    assert refused.webhook_last_error == unreachable.webhook_last_error == WEBHOOK_UNREACHABLE


def test_an_allow_listed_callback_is_delivered_to_the_checked_address(strict, principal, receiver):
    strict.LLMOPS_OUTBOUND_ALLOWLIST = [f"127.0.0.1:{receiver.port}"]
    url = f"http://localhost:{receiver.port}/hook"
    job = job_create(
        principal=principal, body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "callback_url": url}
    )
    Job.objects.unscoped().filter(pk=job.pk).update(status=JobStatus.COMPLETED)
    delivered = _deliver(job)
    assert delivered.webhook_state == WebhookState.DELIVERED
    [hook] = receiver.app.received
    assert hook.headers["host"] == f"localhost:{receiver.port}" and hook.path == "/hook"
    other_port = _deliver(_finished_job(principal, f"http://127.0.0.1:{receiver.port + 1}/hook"))
    assert other_port.webhook_state == WebhookState.FAILED and len(receiver.app.received) == 1


def test_a_callback_redirect_is_not_followed(strict, principal, receiver):
    target = f"http://127.0.0.1:{receiver.port}/internal-only"
    redirecting = RedirectingReceiver(target)
    with ThreadedServer(redirecting) as redirector:
        strict.LLMOPS_OUTBOUND_ALLOWLIST = [f"127.0.0.1:{redirector.port}", f"127.0.0.1:{receiver.port}"]
        job = _deliver(_finished_job(principal, f"{redirector.url}/hook"))
    assert len(redirecting.received) == 1
    assert receiver.app.received == []
    assert (job.webhook_state, job.webhook_last_error) == (WebhookState.FAILED, "HTTP 307")


def test_alert_webhooks_are_sent_through_the_same_check(strict, receiver):
    channel = AlertChannel(kind=ChannelKind.SLACK, target=f"{receiver.url}/slack")
    with pytest.raises(ChannelSendError, match="refused"):
        channel_send(channel=channel, message_id="alert_delivery_1", subject="s", text="t", payload={})
    strict.LLMOPS_OUTBOUND_ALLOWLIST = [f"127.0.0.1:{receiver.port}"]
    channel_send(channel=channel, message_id="alert_delivery_1", subject="s", text="t", payload={})
    assert len(receiver.app.received) == 1


@pytest.mark.parametrize(
    ("entry", "address", "port", "admitted"),
    [
        ("127.0.0.1:9000-9100", "127.0.0.1", 9050, True),
        ("127.0.0.1:9000-9100", "127.0.0.1", 9101, False),
        ("10.0.0.0/8:443", "10.20.30.40", 443, True),
        ("10.0.0.0/8:443", "11.0.0.1", 443, False),
        ("[::1]:8443", "::1", 8443, True),
        ("[::1]:8443", "127.0.0.1", 8443, False),
    ],
)
def test_allowlist_entries(entry, address, port, admitted):
    assert allowed_destination_parse(entry).admits(ipaddress.ip_address(address), port) is admitted


@pytest.mark.parametrize("entry", ["127.0.0.1", "localhost:80", "127.0.0.1:0", "127.0.0.1:90-80", "1.2.3.4:x"])
def test_unreadable_allowlist_entries_are_a_configuration_error(entry):
    with pytest.raises(ImproperlyConfigured):
        allowed_destination_parse(entry)
