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


@pytest.mark.parametrize(
    ("body", "cap", "bound"),
    [
        (BOTH, None, 300),
        (BOTH, 500, 300),
        (BOTH, 200, 200),
        ({**BOTH, "max_tokens": 100, "max_completion_tokens": 1}, None, 1),
        ({**BOTH, "max_tokens": 100_000, "max_completion_tokens": 1}, 500, 1),
        ({**BOTH, "max_tokens": 10, "max_completion_tokens": 900}, None, 900),
    ],
)
def test_both_fields_are_sent_at_the_one_bound_the_gateway_reads(body, cap, bound):
    """An upstream that reads only max_tokens (or only max_completion_tokens) writes no more than was reserved."""
    clamped = clamp_max_tokens(body, cap=cap, default=50)

    assert (clamped["max_tokens"], clamped["max_completion_tokens"]) == (bound, bound)
    assert requested_max_tokens(clamped) == bound
