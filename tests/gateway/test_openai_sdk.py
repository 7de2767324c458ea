"""The official openai SDK, pointed at the live gateway, must just work — answers and typed errors."""

from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest
from openai import OpenAI

from billing.models import UsageRecord
from llmops.gateway.snapshot import SHARED_SCOPE, config_versions_bump
from routing.models import Model


def test_completion_through_the_sdk_is_recorded(openai_client, acme):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=acme.small.name, messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    completion = raw.parse()

    assert completion.choices[0].message.content.startswith("Mock answer to: What is the capital")
    record = UsageRecord.objects.unscoped().get()
    assert raw.headers["x-llmops-request-id"] == record.request_id
    assert completion._request_id == record.request_id  # the SDK reads OpenAI's x-request-id
    assert raw.headers["x-llmops-model"] == acme.small.name
    assert raw.headers["x-llmops-cache"] == "bypass"  # no caching rule: the cache is not read
    assert Decimal(raw.headers["x-llmops-cost-usd"]) == record.cost_usd
    assert float(raw.headers["x-llmops-overhead-ms"]) >= 0
    assert (record.tenant, record.team, record.api_key) == (acme.tenant, acme.team, acme.api_key)
    assert (record.prompt_tokens, record.completion_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert record.http_status == 200 and record.error_code == ""


def test_default_alias_serves_the_tenant_default_model(openai_client, acme):
    completion = openai_client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])

    assert completion.choices[0].finish_reason == "stop"
    record = UsageRecord.objects.unscoped().get()
    assert (record.requested_model, record.served_model) == ("default", acme.small.name)


def test_stream_with_usage_forwards_the_usage_chunk(openai_client, acme):
    stream = openai_client.chat.completions.create(
        model=acme.small.name,
        messages=[{"role": "user", "content": "Tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=8,
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Mock answer to: Tell me")
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].usage.completion_tokens == 8
    record = UsageRecord.objects.unscoped().get()
    assert record.is_stream and not record.usage_estimated
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage_chunks[0].usage.prompt_tokens,
        usage_chunks[0].usage.completion_tokens,
    )


def test_stream_without_usage_hides_the_chunk_but_the_ledger_gets_it(openai_client, acme):
    chunks = list(
        openai_client.chat.completions.create(
            model=acme.small.name, messages=[{"role": "user", "content": "Hi"}], stream=True, max_tokens=6
        )
    )

    assert all(c.usage is None for c in chunks)
    record = UsageRecord.objects.unscoped().get()
    assert record.completion_tokens == 6 and record.prompt_tokens > 0 and record.cost_usd > 0
    assert not record.usage_estimated


def test_bad_key_raises_authentication_error(gateway, acme):
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="llmops-000000000000-not-a-real-secret", max_retries=0)

    with pytest.raises(openai.AuthenticationError) as excinfo:
        client.chat.completions.create(model=acme.small.name, messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.code == "invalid_api_key"
    assert excinfo.value.request_id.startswith("req_")
    assert not UsageRecord.objects.unscoped().exists()


def test_bad_request_raises_bad_request_error_and_is_recorded(openai_client, acme):
    with pytest.raises(openai.BadRequestError) as excinfo:
        openai_client.chat.completions.create(model=acme.small.name, messages=[])

    assert excinfo.value.code == "empty_array"
    assert excinfo.value.param == "messages"
    record = UsageRecord.objects.unscoped().get()
    assert (record.http_status, record.error_code, record.cost_usd) == (400, "empty_array", Decimal(0))
    assert excinfo.value.request_id == record.request_id


def test_unknown_model_raises_not_found_error(openai_client):
    with pytest.raises(openai.NotFoundError) as excinfo:
        openai_client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])

    assert excinfo.value.code == "model_not_found"
    assert UsageRecord.objects.unscoped().get().error_code == "model_not_found"


def test_models_lists_what_the_key_may_use(openai_client, acme, globex):
    # `created` is when the catalog entry was made, not when it is listed.
    Model.objects.filter(pk=acme.small.pk).update(created_at=datetime(2024, 1, 2, tzinfo=UTC))
    config_versions_bump({SHARED_SCOPE})

    listed = list(openai_client.models.list())
    retrieved = openai_client.models.retrieve(acme.small.name)
    assert retrieved._request_id.startswith("req_")  # a DRF endpoint names its answers too

    assert [model.id for model in listed] == sorted([acme.small.name, acme.large.name])
    created = {model.id: model.created for model in listed}
    assert created[acme.small.name] == 1704153600 == retrieved.created
    assert created[acme.large.name] == int(acme.large.created_at.timestamp())
