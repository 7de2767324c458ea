"""The loopback Anthropic and Bedrock servers behind the live gateway, and a catalog provider for each."""

import pytest

from routing.models import Provider
from routing.services import provider_create
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.bedrock_server import BedrockServer
from tests.servers import serving


@pytest.fixture(scope="module")
def anthropic_upstream():
    yield from serving(AnthropicServer())


@pytest.fixture(scope="module")
def bedrock_upstream():
    yield from serving(BedrockServer())


@pytest.fixture
def anthropic_provider(gateway, anthropic_upstream) -> Provider:
    """A provider of kind anthropic at the loopback server, which starts with no request seen and nothing cached."""
    anthropic_upstream.app.requests.clear()
    anthropic_upstream.app.cached_prefixes.clear()
    return provider_create(
        name="anthropic-local",
        kind="anthropic",
        base_url=f"{anthropic_upstream.url}/v1",
        credential=anthropic_upstream.app.api_key,
    )


@pytest.fixture
def bedrock_provider(gateway, bedrock_upstream, monkeypatch, tmp_path) -> Provider:
    """A provider of kind bedrock at the loopback server (boto3 kept away from real AWS configuration), which starts
    with no request seen and nothing cached."""
    bedrock_upstream.app.requests.clear()
    bedrock_upstream.app.cached_prefixes.clear()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return provider_create(
        name="bedrock-local",
        kind="bedrock",
        base_url=bedrock_upstream.url,
        credential="AKIDTESTONLY:test-secret-key",
        region="us-east-1",
    )
