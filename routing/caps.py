"""Token caps enforced on the server: the prompt cap (reject or compress) and the max_tokens clamp.

A prompt is counted exactly before its cap is applied, except when its length alone proves it is over every cap that
could apply (routing.tokens.chat_tokens_lower_bound): a multi-megabyte prompt is then refused at once, before it is
counted, routed or scanned.
"""

from dataclasses import dataclass

from routing.compression import Summarizer, compress_messages
from routing.max_tokens import MAX_TOKENS_FIELDS, requested_max_tokens, with_max_tokens
from routing.policy.document import CompiledPolicy, CompiledRule
from routing.policy.engine import RouteDecision
from routing.policy.errors import RoutingRefusal
from routing.tokens import chat_tokens_lower_bound, count_definition_tokens_async, count_prompt_tokens_async

COMPRESS = "compress"


class TokenCapExceeded(RoutingRefusal):
    def __init__(
        self,
        *,
        prompt_tokens: int,
        cap: int,
        rule_name: str,
        after_compression: int | None = None,
        at_least: bool = False,
    ):
        rule = f" of routing rule '{rule_name}'" if rule_name else ""
        compressed = (
            f" (still {after_compression} after compressing the conversation)" if after_compression is not None else ""
        )
        counted = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        super().__init__(
            f"Your prompt has {counted} tokens{compressed}, over the cap of {cap} tokens{rule}. "
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


def _refuses(rule: CompiledRule, at_least: int) -> bool:
    cap = rule.outcome.prompt_token_cap
    return cap is not None and rule.outcome.over_cap_action != COMPRESS and at_least > cap


def _sure_to_match(rule: CompiledRule, at_least: int) -> bool:
    """Whether the rule matches any request (for the model it names) whose prompt has at least `at_least` tokens."""
    return (
        not (rule.task_types or rule.user_tiers or rule.team_slugs or rule.keywords)
        and rule.message_regex is None
        and rule.has_tools is None
        and rule.has_images is None
        and rule.prompt_tokens_max is None
        and (rule.prompt_tokens_min is None or rule.prompt_tokens_min <= at_least)
    )


def cap_refusal_before_counting(
    policy: CompiledPolicy | None, messages: list[dict], *, requested_model: str
) -> TokenCapExceeded | None:
    """The refusal any rule the request can match would give, when the prompt's length alone proves it.

    Only what is known without reading the prompt is judged: the requested model, and the bound against each rule's
    prompt-token range. A rule that may match must reject over a cap the bound exceeds; the walk stops, refusing, at
    the first rule sure to match. Without such a rule the request might match none, and no rule caps it.
    """
    if policy is None:
        return None
    at_least = chat_tokens_lower_bound(messages)
    refusing: list[CompiledRule] = []
    for rule in policy.rules:
        if rule.requested_models and requested_model not in rule.requested_models:
            continue
        if rule.prompt_tokens_max is not None and at_least > rule.prompt_tokens_max:
            continue
        if not _refuses(rule, at_least):
            return None
        refusing.append(rule)
        if _sure_to_match(rule, at_least):
            cap = max(candidate.outcome.prompt_token_cap for candidate in refusing)
            rule_name = refusing[0].name if len(refusing) == 1 else ""
            return TokenCapExceeded(prompt_tokens=at_least, cap=cap, rule_name=rule_name, at_least=True)
    return None


def cap_refusal(decision: RouteDecision, prompt_tokens: int) -> TokenCapExceeded | None:
    """The refusal of a prompt of ``prompt_tokens`` (counted in the served model's encoding) over the decision's cap,
    when its rule rejects rather than compresses."""
    outcome = decision.outcome
    cap = outcome.prompt_token_cap
    if cap is None or outcome.over_cap_action == COMPRESS or prompt_tokens <= cap:
        return None
    return TokenCapExceeded(prompt_tokens=prompt_tokens, cap=cap, rule_name=decision.rule_name)


def clamp_max_tokens(body: dict, *, cap: int | None, default: int | None) -> dict:
    """The body with its one cap on completion tokens (routing.max_tokens) clamped to ``cap``, or set to the default
    when it sent none. Every max_tokens field the client sent carries that one bound: an upstream that reads only
    ``max_tokens`` (as many OpenAI-compatible servers do) then writes no more than the gateway reserved for."""
    requested = requested_max_tokens(body)
    if requested is None:
        value = default if default is not None else cap
        if value is None:
            return body
        return with_max_tokens(body, min(value, cap) if cap is not None else value)
    bound = min(requested, cap) if cap is not None else requested
    return {**body, **{field: bound for field in MAX_TOKENS_FIELDS if body.get(field) is not None}}


async def apply_token_caps(
    body: dict,
    *,
    decision: RouteDecision,
    model: str,
    summarize: Summarizer | None = None,
    namespace: str = "",
    prompt_tokens: int | None = None,
) -> CappedRequest:
    """The body to send upstream under the decision's caps; `model` is the served model's upstream name (encoding).
    `prompt_tokens`, when given, is the prompt (routing.tokens.count_prompt_tokens_async) already counted with that
    encoding. The cap holds the whole prompt: the tool and function definitions and response format count against it
    as the messages do, and compression, which shortens only the messages, has what they leave.

    Raises TokenCapExceeded over the prompt cap when the rule rejects, or when compression cannot get under it.
    """
    messages = body["messages"]
    outcome = decision.outcome
    cap = outcome.prompt_token_cap
    rejects = cap is not None and outcome.over_cap_action != COMPRESS
    if prompt_tokens is None and rejects and (at_least := chat_tokens_lower_bound(messages)) > cap:
        raise TokenCapExceeded(prompt_tokens=at_least, cap=cap, rule_name=decision.rule_name, at_least=True)
    tokens_before = prompt_tokens if prompt_tokens is not None else await count_prompt_tokens_async(body, model=model)
    tokens_after = tokens_before
    compressed = summarized = False
    if (refusal := cap_refusal(decision, tokens_before)) is not None:
        raise refusal
    if cap is not None and tokens_before > cap:
        definitions = await count_definition_tokens_async(body, model=model)
        result = await compress_messages(
            messages,
            budget=cap - definitions,
            model=model,
            summarize=summarize,
            namespace=namespace,
            tokens_before=tokens_before - definitions,
        )
        if result.tokens_after + definitions > cap:
            raise TokenCapExceeded(
                prompt_tokens=tokens_before,
                cap=cap,
                rule_name=decision.rule_name,
                after_compression=result.tokens_after + definitions,
            )
        body = {**body, "messages": result.messages}
        tokens_after, compressed, summarized = result.tokens_after + definitions, result.compressed, result.summarized
    body = clamp_max_tokens(body, cap=outcome.max_tokens_cap, default=outcome.default_max_tokens)
    return CappedRequest(
        body=body,
        prompt_tokens_before=tokens_before,
        prompt_tokens_after=tokens_after,
        compressed=compressed,
        summarized=summarized,
    )
