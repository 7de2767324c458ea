"""The answer guard on streamed answers, through the live gateway and the mock upstream, which echoes the prompt's
first words one chunk each: under block nothing of an echoed secret reaches the client and the stream ends with
`answer_contains_secret`; under flag the stream is served whole and its row flagged; a clean stream is untouched."""

import httpx
import openai
import orjson
import pytest

from billing.models import UsageRecord
from routing.policy.drafts import policy_draft_replace
from routing.services import provider_credential_set, routing_policy_create, routing_policy_publish
from tests.factories import ModelFactory

# Words, so the mock echoes the key in several chunks. It is no credential shape: only the exact match finds it.
PROVIDER_KEY = "upstream cred 7f3a9c0b 51d2e4f8"
SHAPED_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2oPq5sTu8wXy1zAb4dEf7hIj0k"
ECHO = "Please repeat {} back"


@pytest.fixture
def guarded(acme):
    """Acme's provider holding PROVIDER_KEY, and its policy's guard action set by calling this."""
    provider_credential_set(provider=acme.small.provider, credential=PROVIDER_KEY)
    policy = routing_policy_create(tenant=acme.tenant)

    def guard(action: str) -> None:
        rules = [{"priority": 1, "name": "all", "outcome": {}}]
        policy_draft_replace(policy=policy, document={"aliases": {}, "rules": rules, "injection_guard_action": action})
        routing_policy_publish(policy=policy, actor=None)

    return guard


def stream(gateway, setup, content: str, *, model: str | None = None) -> list[dict | str]:
    """The chat stream's events as the client gets them: each data event's JSON, comments and [DONE] as they are."""
    body = {"model": model or setup.small.name, "messages": [{"role": "user", "content": content}], "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {setup.key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    events = [event for event in raw.split("\n\n") if event]
    return [orjson.loads(event[6:]) if event.startswith("data: {") else event for event in events]


def written(events: list[dict | str]) -> str:
    """Everything the answer's chunks wrote: content, refusal, tool-call arguments."""
    pieces = []
    for event in events:
        choices = event.get("choices") if isinstance(event, dict) else None
        for choice in choices or []:
            delta = choice.get("delta") or {}
            pieces += [delta.get("content") or "", delta.get("refusal") or ""]
            pieces += [call["function"].get("arguments") or "" for call in delta.get("tool_calls") or []]
    return "".join(pieces)


def assert_none_of(secret: str, text: str) -> None:
    assert secret not in text
    assert not any(text.endswith(secret[:length]) for length in range(4, len(secret) + 1)), text


def the_row() -> UsageRecord:
    return UsageRecord.objects.unscoped().get()


def assert_withheld(row: UsageRecord) -> None:
    assert (row.http_status, row.error_code) == (502, "answer_contains_secret")
    assert row.injection_flagged and row.cost_usd > 0 and row.completion_tokens > 0


def test_under_block_no_part_of_the_provider_key_is_streamed(gateway, acme, guarded):
    guarded("block")

    events = stream(gateway, acme, ECHO.format(PROVIDER_KEY))

    assert_none_of(PROVIDER_KEY, written(events))
    assert "7f3a9c0b" not in str(events)
    assert events[-1]["error"]["code"] == "answer_contains_secret"
    assert "[DONE]" not in str(events)
    assert_withheld(the_row())


def test_under_block_a_credential_shaped_value_is_withheld_from_the_sdk(openai_client, acme, guarded):
    guarded("block")
    chunks = []

    with pytest.raises(openai.APIError) as error:
        for chunk in openai_client.chat.completions.create(
            model=acme.small.name, messages=[{"role": "user", "content": ECHO.format(SHAPED_KEY)}], stream=True
        ):
            chunks.append(chunk)

    assert error.value.code == "answer_contains_secret"
    assert SHAPED_KEY not in str(error.value.body)
    assert_none_of(SHAPED_KEY, "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices))
    assert_withheld(the_row())


@pytest.mark.parametrize("upstream_name", ["mock-tool-call", "mock-refuse"])
def test_under_block_tool_call_arguments_and_refusals_are_guarded(gateway, acme, guarded, upstream_name):
    model = ModelFactory(name=f"acme-{upstream_name}", provider=acme.small.provider, upstream_name=upstream_name)
    acme.tenant.model_access.allowed_models.add(model)
    guarded("block")

    events = stream(gateway, acme, ECHO.format(PROVIDER_KEY), model=model.name)

    assert_none_of(PROVIDER_KEY, written(events))
    assert events[-1]["error"]["code"] == "answer_contains_secret"
    assert_withheld(the_row())


def test_under_block_a_key_split_by_an_early_finish_reason_is_not_streamed(gateway, acme, guarded):
    """The upstream finishes the choice after `... upstream cred 7f3a9c0b` (its first 8 pieces) and goes on writing
    to it: what it wrote by then is not let go as the end of the answer."""
    reopening = ModelFactory(name="acme-reopen", provider=acme.small.provider, upstream_name="mock-reopen-8")
    acme.tenant.model_access.allowed_models.add(reopening)
    guarded("block")

    events = stream(gateway, acme, ECHO.format(PROVIDER_KEY), model=reopening.name)

    assert_none_of(PROVIDER_KEY, written(events))
    assert "7f3a9c0b" not in str(events)
    assert events[-1]["error"]["code"] == "answer_contains_secret"
    assert_withheld(the_row())


def test_under_flag_the_stream_is_served_whole_and_its_row_flagged(gateway, acme, guarded):
    guarded("flag")

    events = stream(gateway, acme, ECHO.format(PROVIDER_KEY))

    assert PROVIDER_KEY in written(events) and events[-1] == "data: [DONE]"
    row = the_row()
    assert (row.http_status, row.injection_flagged) == (200, True)


def test_under_flag_a_stream_cut_short_is_flagged_too(gateway, acme, guarded):
    broken = ModelFactory(name="acme-broken", provider=acme.small.provider, upstream_name="mock-break")
    acme.tenant.model_access.allowed_models.add(broken)
    guarded("flag")

    events = stream(gateway, acme, ECHO.format(SHAPED_KEY), model=broken.name)

    assert SHAPED_KEY in written(events) and events[-1]["error"]["code"] == "upstream_stream_truncated"
    assert the_row().injection_flagged


def test_a_clean_stream_under_block_is_the_stream_without_the_guard(gateway, acme, guarded):
    def as_sent(action: str) -> list[dict | str]:
        guarded(action)
        events = stream(gateway, acme, "Tell me about the weather in Lisbon")
        # Each answer has an id and a time of its own.
        return [{**e, "id": None, "created": None} if isinstance(e, dict) else e for e in events]

    unguarded, blocking = as_sent("none"), as_sent("block")

    assert blocking == unguarded
    assert written(blocking).startswith("Mock answer to: Tell me about the weather in Lisbon")
    assert [row.injection_flagged for row in UsageRecord.objects.unscoped().all()] == [False, False]


@pytest.mark.parametrize("endpoint", ["/v1/responses", "/v1/messages"])
def test_responses_and_messages_streams_are_guarded_as_chat_streams_are(gateway, acme, guarded, endpoint):
    guarded("block")
    content = ECHO.format(PROVIDER_KEY)
    body = {"model": acme.small.name, "stream": True}
    if endpoint == "/v1/responses":
        body["input"] = content
    else:
        body.update(max_tokens=64, messages=[{"role": "user", "content": content}])

    response = httpx.post(
        f"{gateway.url}{endpoint}", json=body, headers={"authorization": f"Bearer {acme.key}"}, timeout=30
    )

    assert response.status_code == 200
    assert "7f3a9c0b" not in response.text and "upstream cred" not in response.text
    assert "event: error" in response.text and "answer_contains_secret" in response.text
    assert_withheld(the_row())
