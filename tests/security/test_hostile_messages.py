"""Hostile input against /v1/messages on the live gateway (hypothesis): well-shaped Anthropic bodies and ones with any
field, at any depth, replaced by any JSON value. Nothing is a 5xx; every refusal is Anthropic-shaped with a request
id; every answer is a Message (or a complete event stream); each request leaves exactly one ledger row, of its own
tenant."""

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import UsageRecord
from tests.chat_bodies import edge_text, json_values, paths_in, replaced, right_or_one_field_wrong, short_text

ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
}
FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True
)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

cache_control = st.sampled_from([{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])
said = edge_text.filter(str.strip)
text_block = st.fixed_dictionaries({"type": st.just("text"), "text": said}, optional={"cache_control": cache_control})
image_block = st.sampled_from(
    [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
)
user_turn = st.fixed_dictionaries(
    {"role": st.just("user"), "content": said | st.lists(text_block | text_block | image_block, min_size=1, max_size=3)}
)
assistant_turn = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": said | st.lists(text_block, min_size=1, max_size=2)}
)
OPTIONAL_FIELDS = {
    "system": said | st.lists(text_block, max_size=2),
    "temperature": st.floats(0, 1),
    "top_p": st.floats(0, 1),
    "top_k": st.integers(0, 100),
    "stop_sequences": st.lists(short_text, max_size=4),
    "stream": st.booleans(),
    "metadata": st.fixed_dictionaries({}, optional={"user_id": short_text}),
}
# What the gateway refuses by name, added to a body that is otherwise right.
REFUSED = st.sampled_from(
    [
        ("tools", [{"name": "get_weather", "input_schema": {"type": "object"}}]),
        ("thinking", {"type": "enabled", "budget_tokens": 1024}),
        ("messages", [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}]),
        ("messages", [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "42"}]}]),
    ]
) | st.tuples(st.text(min_size=1, max_size=12), json_values)


# The fields whose value picks what the rest of an object is (a block's or a source's type, a message's role, ...),
# which a check may look up in a table before it knows the value is a string; and values of every other JSON type.
DISCRIMINATORS = frozenset({"type", "role", "media_type", "ttl"})
not_strings = st.sampled_from([["text"], {"type": "text"}, [], {}, [["user"]], None, 1, 1.5, True])


def _discriminator_replaced(body: dict):
    """The body with one of its discriminating fields, at any depth, given a value that is not a string. The deepest
    come first: hypothesis favours the first of a sample, and a message's role alone would hide the blocks'."""
    paths = sorted((path for path in paths_in(body) if path[-1] in DISCRIMINATORS), key=len, reverse=True)
    if not paths:
        return st.just(body)
    return st.tuples(st.sampled_from(paths), not_strings).map(lambda choice: replaced(body, *choice))


def message_bodies(model: str):
    right = st.fixed_dictionaries(
        {
            "model": st.just(model),
            "max_tokens": st.integers(1, 64),
            "messages": st.lists(user_turn | assistant_turn, min_size=1, max_size=3),
        },
        optional=OPTIONAL_FIELDS,
    )
    refused = st.tuples(right, REFUSED).map(lambda pair: {**pair[0], pair[1][0]: pair[1][1]})
    documents = right | right | refused
    discriminator_wrong = documents.flatmap(_discriminator_replaced)
    return right_or_one_field_wrong(documents) | discriminator_wrong | discriminator_wrong


def _checked(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    assert response.headers["x-llmops-request-id"].startswith("req_")
    if response.status_code >= 400:
        payload = response.json()
        assert set(payload) == {"type", "error", "request_id"} and payload["type"] == "error"
        assert payload["error"]["type"] in ANTHROPIC_ERROR_TYPES and payload["error"]["message"]
        assert payload["request_id"] == response.headers["request-id"]
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.startswith("event: message_start\n")
        assert response.text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')
    else:
        assert response.json()["type"] == "message"


def test_messages_survive_malformed_bodies(gateway, acme, globex):
    request_ids = []
    headers = {"x-api-key": acme.key, "anthropic-version": "2023-06-01", "content-type": "application/json"}

    with httpx.Client(base_url=gateway.url, headers=headers, timeout=15) as client:

        @FUZZ
        @given(body=message_bodies(acme.small.name))
        def run(body):
            response = client.post("/v1/messages", content=json.dumps(body))
            _checked(response)
            assert globex.small.name not in response.text and globex.key not in response.text
            request_ids.append(response.headers["x-llmops-request-id"])

        run()

    rows = UsageRecord.objects.unscoped().filter(tenant=acme.tenant).values_list("request_id", flat=True)
    assert sorted(rows) == sorted(request_ids)
    assert not UsageRecord.objects.unscoped().filter(tenant=globex.tenant).exists()
