"""The fields of an OpenAI chat request that cap the answer's length, and the one reading of them.

OpenAI deprecated ``max_tokens`` for ``max_completion_tokens``, which supersedes it: a request that sends both is
capped by ``max_completion_tokens``. Everything that reads the cap — routing's features, the caps, the worst case
budgets reserve, validation, the provider adapters, batch lines — reads it through ``requested_max_tokens``. An
upstream may read the other field (many OpenAI-compatible servers know only ``max_tokens``), so the caps
(routing.caps.clamp_max_tokens) send every field the client sent at that one value.
"""

# In order of precedence: the first one sent is the cap.
MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")
# The field the gateway sets on a request that sent none; every provider and adapter reads it.
SET_FIELD = "max_tokens"


def requested_max_tokens(body: dict) -> int | None:
    """The request's cap on completion tokens; None when it sent none."""
    return next((body[field] for field in MAX_TOKENS_FIELDS if body.get(field) is not None), None)


def with_max_tokens(body: dict, value: int) -> dict:
    """The body capped at ``value`` tokens, for a request that sent no cap."""
    return {**body, SET_FIELD: value}
