import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from billing.alerts.services import alert_channel_create
from routing.models import Provider
from routing.services import provider_create
from tenants.outbound import outbound_url_errors
from tests.factories import TenantFactory, UserFactory

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
