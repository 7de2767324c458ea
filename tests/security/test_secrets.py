from datetime import timedelta

import boto3
import httpx
import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from moto import mock_aws

from billing.alerts.services import alert_channel_create
from core.crypto import decrypt_secret
from routing.catalog import provider_credential
from routing.models import Provider
from routing.services import provider_create
from tenants.models import ApiKey
from tenants.services import api_key_create, api_key_rotate
from tests.factories import TeamFactory, TenantFactory

OLD_KEY, NEW_KEY = Fernet.generate_key().decode(), Fernet.generate_key().decode()


@pytest.mark.django_db
def test_reencrypt_moves_every_secret_to_the_first_key(settings, capsys):
    settings.LLMOPS_ENCRYPTION_KEY = OLD_KEY
    provider = provider_create(name="p", base_url="https://api.openai.com/v1", credential="sk-provider-secret")
    channel = alert_channel_create(
        tenant=TenantFactory(), name="hook", kind="webhook", target="https://hooks.example.com/x", signing_secret="s3"
    )
    settings.LLMOPS_ENCRYPTION_KEY = f"{NEW_KEY},{OLD_KEY}"
    call_command("credentials_reencrypt")
    assert "re-encrypted 2 secret(s)" in capsys.readouterr().out

    settings.LLMOPS_ENCRYPTION_KEY = NEW_KEY
    provider.refresh_from_db()
    channel.refresh_from_db()
    assert decrypt_secret(provider.credential_encrypted) == "sk-provider-secret"
    assert decrypt_secret(channel.signing_secret_encrypted) == "s3"


@pytest.mark.django_db
def test_reencrypt_fails_loudly_on_a_secret_no_key_can_read(settings):
    settings.LLMOPS_ENCRYPTION_KEY = OLD_KEY
    provider_create(name="p", base_url="https://api.openai.com/v1", credential="sk-provider-secret")
    settings.LLMOPS_ENCRYPTION_KEY = NEW_KEY
    with pytest.raises(CommandError, match=r"routing\.Provider\.credential_encrypted"):
        call_command("credentials_reencrypt")


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


@pytest.mark.django_db
def test_credentials_referenced_in_secrets_manager_and_parameter_store_are_resolved(aws):
    secrets = boto3.client("secretsmanager")
    secrets.create_secret(Name="llm/openai", SecretString="sk-from-secrets-manager")
    secrets.create_secret(Name="llm/bundle", SecretString='{"api_key": "sk-from-json"}')
    boto3.client("ssm").put_parameter(Name="/llm/anthropic", Value="sk-ant-from-ssm", Type="SecureString")

    def provider(name, reference):
        return provider_create(name=name, base_url="https://api.example.com/v1", credential=reference)

    assert provider_credential(provider("sm", "aws-sm://llm/openai")) == "sk-from-secrets-manager"
    assert provider_credential(provider("sm-json", "aws-sm://llm/bundle#api_key")) == "sk-from-json"
    assert provider_credential(provider("ssm", "aws-ssm:///llm/anthropic")) == "sk-ant-from-ssm"
    assert provider_credential(provider("missing", "aws-sm://llm/none")) == ""


@pytest.mark.django_db
def test_a_referenced_credential_is_cached_for_the_ttl(aws, settings, monkeypatch):
    secrets = boto3.client("secretsmanager")
    secrets.create_secret(Name="llm/rotating", SecretString="first")
    provider = Provider.objects.create(name="env", base_url="https://x.example/v1", credential_env_var="LLM_REF")
    monkeypatch.setenv("LLM_REF", "aws-sm://llm/rotating")
    settings.LLMOPS_SECRET_REFERENCE_TTL_SECONDS = 300
    assert provider_credential(provider) == "first"
    secrets.put_secret_value(SecretId="llm/rotating", SecretString="second")
    assert provider_credential(provider) == "first"
    settings.LLMOPS_SECRET_REFERENCE_TTL_SECONDS = 0
    monkeypatch.setattr("core.secret_references.time.monotonic", lambda: 10**9)
    assert provider_credential(provider) == "second"


@pytest.mark.django_db
def test_rotation_gives_a_successor_and_the_old_key_works_for_the_overlap_only():
    team = TeamFactory()
    old, _ = api_key_create(team=team, name="svc")
    successor, full_key = api_key_rotate(api_key=old, overlap=timedelta(hours=2))
    assert full_key.startswith(f"llmops-{successor.prefix}-") and successor.team == team and successor.name == "svc"
    old.refresh_from_db()
    now = timezone.now()
    assert old.is_usable(now + timedelta(hours=1)) and not old.is_usable(now + timedelta(hours=3))
    assert successor.is_usable(now + timedelta(days=365))


@pytest.mark.django_db
def test_rotation_never_extends_a_key_and_refuses_a_revoked_one():
    team = TeamFactory()
    soon = timezone.now() + timedelta(minutes=5)
    short_lived, _ = api_key_create(team=team, expires_at=soon)
    api_key_rotate(api_key=short_lived, overlap=timedelta(days=1))
    short_lived.refresh_from_db()
    assert short_lived.expires_at == soon
    revoked, _ = api_key_create(team=team)
    revoked.revoked_at = timezone.now()
    revoked.save()
    with pytest.raises(ValidationError):
        api_key_rotate(api_key=revoked, overlap=timedelta(hours=1))


@pytest.mark.django_db
def test_rotate_command_prints_the_successor_once(capsys):
    old, _ = api_key_create(team=TeamFactory())
    call_command("rotate_api_key", "--prefix", old.prefix, "--overlap-hours", "1")
    out = capsys.readouterr().out
    successor = ApiKey.objects.unscoped().exclude(pk=old.pk).get()
    assert f"llmops-{successor.prefix}-" in out
    with pytest.raises(CommandError):
        call_command("rotate_api_key", "--prefix", "nope")


@pytest.mark.django_db
@pytest.mark.parametrize("hours", ["-1", "soon", "inf", "nan"])
def test_rotate_command_refuses_an_overlap_that_is_not_a_number_of_hours(hours):
    old, _ = api_key_create(team=TeamFactory())
    with pytest.raises(CommandError, match="--overlap-hours"):
        call_command("rotate_api_key", "--prefix", old.prefix, "--overlap-hours", hours)
    assert ApiKey.objects.unscoped().get() == old


def test_old_and_rotated_keys_authenticate_at_the_gateway_during_the_overlap(gateway, acme):
    _, full_key = api_key_rotate(api_key=acme.api_key, overlap=timedelta(hours=1))
    body = {"model": acme.small.name, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for key in (acme.key, full_key):
            assert client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body).is_success
    acme.api_key.refresh_from_db()
    acme.api_key.expires_at = timezone.now() - timedelta(seconds=1)
    acme.api_key.save()
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {acme.key}"}, json=body)
    assert response.status_code == 401
