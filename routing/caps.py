"""Token caps enforced on the server: the prompt cap (reject or compress) and the max_tokens clamp."""

from dataclasses import dataclass

from routing.compression import Summarizer, compress_messages
from routing.policy.engine import RouteDecision
from routing.policy.errors import RoutingRefusal
from routing.tokens import count_chat_tokens

MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")


class TokenCapExceeded(RoutingRefusal):
    def __init__(self, *, prompt_tokens: int, cap: int, rule_name: str, after_compression: int | None = None):
        rule = f" of routing rule '{rule_name}'" if rule_name else ""
        compressed = (
            f" (still {after_compression} after compressing the conversation)" if after_compression is not None else ""
        )
        super().__init__(
            f"Your prompt has {prompt_tokens} tokens{compressed}, over the cap of {cap} tokens{rule}. "
            "Shorten the conversation.",
            status=400,
            code="token_cap_exceeded",
            param="messages",
        )
        self.prompt_tokens = prompt_tokens
        self.cap = cap


@dataclass(frozen=True, slots=True)
class CappedRequest:
    body: dict
    prompt_tokens_before: int
    prompt_tokens_after: int
    compressed: bool
    summarized: bool


def clamp_max_tokens(body: dict, *, cap: int | None, default: int | None) -> dict:
    """Clamp whichever of max_tokens / max_completion_tokens the client sent; set `max_tokens` when it sent none."""
    sent = [field for field in MAX_TOKENS_FIELDS if body.get(field) is not None]
    if not sent:
        value = default if default is not None else cap
        if value is None:
            return body
        return {**body, "max_tokens": min(value, cap) if cap is not None else value}
    if cap is None:
        return body
    return {**body, **{field: min(body[field], cap) for field in sent}}


async def apply_token_caps(
    body: dict,
    *,
    decision: RouteDecision,
    model: str,
    summarize: Summarizer | None = None,
    namespace: str = "",
) -> CappedRequest:
    """The body to send upstream under the decision's caps; `model` is the served model's upstream name (encoding).

    Raises TokenCapExceeded over the prompt cap when the rule rejects, or when compression cannot get under it.
    """
    messages = body["messages"]
    tokens_before = count_chat_tokens(messages, model=model)
    tokens_after = tokens_before
    compressed = summarized = False
    cap = decision.prompt_token_cap
    if cap is not None and tokens_before > cap:
        if decision.over_cap_action != "compress":
            raise TokenCapExceeded(prompt_tokens=tokens_before, cap=cap, rule_name=decision.rule_name)
        result = await compress_messages(messages, budget=cap, model=model, summarize=summarize, namespace=namespace)
        if result.tokens_after > cap:
            raise TokenCapExceeded(
                prompt_tokens=tokens_before,
                cap=cap,
                rule_name=decision.rule_name,
                after_compression=result.tokens_after,
            )
        body = {**body, "messages": result.messages}
        tokens_after, compressed, summarized = result.tokens_after, result.compressed, result.summarized
    body = clamp_max_tokens(body, cap=decision.max_tokens_cap, default=decision.default_max_tokens)
    return CappedRequest(
        body=body,
        prompt_tokens_before=tokens_before,
        prompt_tokens_after=tokens_after,
        compressed=compressed,
        summarized=summarized,
    )
