"""One reading of a request's cap on completion tokens, whoever reads it (routing.max_tokens)."""

import pytest

from llmops.gateway.chat.worst_case import OutputBound
from routing.caps import clamp_max_tokens
from routing.max_tokens import requested_max_tokens
from routing.policy import route_request_from_body
from routing.providers.anthropic import messages_request
from routing.providers.bedrock import converse_request

MESSAGES = [{"role": "user", "content": "hi"}]
# OpenAI deprecated max_tokens for max_completion_tokens, which supersedes it when both are sent.
BOTH = {"model": "m", "messages": MESSAGES, "max_tokens": 900, "max_completion_tokens": 300}

READERS = {
    "routing features": lambda body: (
        route_request_from_body(body, headers={}, tenant_id=1, team_slug="", prompt_tokens=1).requested_max_tokens
    ),
    "worst case": lambda body: OutputBound.of(body, model="gpt-4o-mini").max_tokens,
    "anthropic adapter": lambda body: messages_request(body)["max_tokens"],
    "bedrock adapter": lambda body: converse_request(body)["inferenceConfig"]["maxTokens"],
}


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_max_completion_tokens_supersedes_max_tokens(reader):
    assert reader(BOTH) == requested_max_tokens(BOTH) == 300


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_either_field_alone_is_the_cap(reader, field):
    assert reader({"model": "m", "messages": MESSAGES, field: 42}) == 42


def test_the_clamp_caps_both_fields_and_the_cap_read_stays_the_superseding_one():
    clamped = clamp_max_tokens(BOTH, cap=500, default=None)

    assert (clamped["max_tokens"], clamped["max_completion_tokens"]) == (500, 300)
    assert requested_max_tokens(clamped) == 300
