"""`make demo` on an existing database: the demo provider follows MOCK_PORT (seed_demo's --upstream-url)."""

from io import StringIO

from django.core.management import call_command
from openai import OpenAI

from routing.models import Provider
from tenants.models import AuditEvent
from tests.servers import free_port


def seed_demo(upstream_url: str) -> str:
    stdout = StringIO()
    call_command("seed_demo", "--upstream-url", upstream_url, stdout=stdout)
    return stdout.getvalue()


def test_a_rerun_with_another_mock_port_points_the_demo_provider_there(gateway, mock_upstream, settings, tmp_path):
    settings.LLMOPS_DEMO_DIR = tmp_path / "var"
    seed_demo(f"http://127.0.0.1:{free_port()}/v1")
    key = (tmp_path / "var" / "demo-api-key").read_text().strip()

    output = seed_demo(f"{mock_upstream.url}/v1")

    assert Provider.objects.get(name="mock").base_url == f"{mock_upstream.url}/v1"
    assert f"now points at {mock_upstream.url}/v1" in output
    with OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=20) as client:
        reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello"}])
        embedded = client.embeddings.create(model="mock-embed", input="hello")
        answered = client.responses.create(model="auto", input="hello")
    assert reply.choices[0].message.content.startswith("Mock answer to: hello")
    assert len(embedded.data[0].embedding) == 1536
    assert answered.output_text.startswith("Mock answer to: hello")

    audit_rows = AuditEvent.objects.unscoped().count()
    assert "now points at" not in seed_demo(f"{mock_upstream.url}/v1")
    assert AuditEvent.objects.unscoped().count() == audit_rows
