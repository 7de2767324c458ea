"""Prompt caps, the max_tokens clamp, and compression with exact counts."""

import functools
import uuid

import orjson
import pytest

from routing import caps, tokens
from routing.caps import TokenCapExceeded, apply_token_caps, cap_refusal_before_counting, clamp_max_tokens
from routing.compression import TRUNCATION_MARKER, compress_messages, summary_cache
from routing.policy import RouteDecision, compile_policy
from routing.policy.document import RuleOutcome
from routing.services import default_policy_document
from routing.tokens import chat_tokens_lower_bound, count_chat_tokens, count_text_tokens
from tests.loops import run as run_on_fresh_loop

MODEL = "gpt-4o"


def async_test(function):
    """Run a coroutine test on its own event loop (the suite has no asyncio plugin)."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        return run_on_fresh_loop(function(*args, **kwargs))

    return run


def decision(**outcome) -> RouteDecision:
    return RouteDecision(outcome=RuleOutcome(target_model="m", **outcome), rule_name="capped", policy_version=1)


def turn(index: int, words: int = 40) -> list[dict]:
    return [
        {"role": "user", "content": f"question {index} " + "word " * words},
        {"role": "assistant", "content": f"answer {index} " + "reply " * words},
    ]


def conversation(turns: int = 6) -> list[dict]:
    messages = [{"role": "system", "content": "You are terse."}]
    for index in range(turns):
        messages += turn(index)
    return [*messages, {"role": "user", "content": "the latest question"}]


@async_test
async def test_over_the_cap_is_refused_with_the_numbers():
    messages = conversation()
    total = count_chat_tokens(messages, model=MODEL)
    with pytest.raises(TokenCapExceeded) as refused:
        await apply_token_caps({"messages": messages}, decision=decision(prompt_token_cap=100), model=MODEL)
    assert (refused.value.status, refused.value.code) == (400, "token_cap_exceeded")
    assert f"has {total} tokens" in refused.value.message
    assert "cap of 100 tokens of routing rule 'capped'" in refused.value.message


@async_test
async def test_at_the_cap_passes_untouched():
    messages = conversation()
    total = count_chat_tokens(messages, model=MODEL)
    capped = await apply_token_caps({"messages": messages}, decision=decision(prompt_token_cap=total), model=MODEL)
    assert capped.body["messages"] == messages
    assert (capped.prompt_tokens_before, capped.prompt_tokens_after, capped.compressed) == (total, total, False)


@async_test
async def test_compression_keeps_system_and_recent_turns_within_the_cap_with_exact_counts():
    messages = conversation()
    total = count_chat_tokens(messages, model=MODEL)
    cap = total // 2
    capped = await apply_token_caps(
        {"messages": messages}, decision=decision(prompt_token_cap=cap, over_cap_action="compress"), model=MODEL
    )
    kept = capped.body["messages"]
    assert capped.compressed
    assert capped.prompt_tokens_before == total
    assert capped.prompt_tokens_after == count_chat_tokens(kept, model=MODEL) <= cap
    assert kept[0] == messages[0]
    assert kept[-1] == messages[-1]
    # Every kept message is one of the originals, whole, and in order: nothing was cut inside a message.
    original_positions = [messages.index(message) for message in kept]
    assert original_positions == sorted(original_positions)
    # The most recent turns are the ones kept.
    assert original_positions[1:] == list(range(original_positions[1], len(messages)))


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look an order up. " + "Mind the details. " * 60,
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
]


@async_test
async def test_tool_definitions_count_against_the_cap_and_compression_leaves_them_their_room():
    """The provider reads and bills the definitions as prompt: a cap holds them with the messages, and compression,
    which can shorten only the messages, fits those in what the definitions leave."""
    messages = conversation()
    body = {"messages": messages, "tools": TOOLS}
    definitions = count_text_tokens(orjson.dumps(TOOLS).decode(), model=MODEL)
    total = count_chat_tokens(messages, model=MODEL) + definitions
    assert definitions > 200

    with pytest.raises(TokenCapExceeded) as refused:
        await apply_token_caps(body, decision=decision(prompt_token_cap=total - 1), model=MODEL)
    assert f"has {total} tokens" in refused.value.message

    cap = total - 100
    capped = await apply_token_caps(
        body, decision=decision(prompt_token_cap=cap, over_cap_action="compress"), model=MODEL
    )
    kept = capped.body["messages"]
    assert capped.compressed and capped.prompt_tokens_before == total
    assert capped.prompt_tokens_after == count_chat_tokens(kept, model=MODEL) + definitions <= cap


@async_test
async def test_compression_never_splits_a_tool_call_from_its_results():
    tool_turn = [
        {"role": "user", "content": "weather? " + "pad " * 60},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny " * 30},
    ]
    messages = [{"role": "system", "content": "s"}, *turn(0), *tool_turn, {"role": "user", "content": "thanks"}]
    for budget in range(20, count_chat_tokens(messages, model=MODEL)):
        kept = (await compress_messages(messages, budget=budget, model=MODEL)).messages
        has_call = messages[4] in kept
        has_result = messages[5] in kept
        assert has_call == has_result, budget


@async_test
async def test_one_message_alone_over_budget_is_truncated_to_fit_exactly():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "lorem ipsum " * 500}]
    result = await compress_messages(messages, budget=200, model=MODEL)
    assert result.truncated
    assert result.messages[0] == messages[0]
    assert TRUNCATION_MARKER in result.messages[1]["content"]
    assert result.tokens_after == count_chat_tokens(result.messages, model=MODEL)
    assert 190 <= result.tokens_after <= 200


@async_test
async def test_system_messages_alone_over_the_cap_still_refuse():
    messages = [{"role": "system", "content": "rule " * 300}, {"role": "user", "content": "hi"}]
    with pytest.raises(TokenCapExceeded, match="after compressing"):
        await apply_token_caps(
            {"messages": messages}, decision=decision(prompt_token_cap=50, over_cap_action="compress"), model=MODEL
        )


@async_test
@pytest.mark.parametrize("crowded_by", ["system messages", "tool definitions"])
async def test_no_summary_is_paid_for_a_prompt_the_cap_refuses_after_compressing(crowded_by):
    """What the compression cannot drop (system messages, the definitions the cap holds beside the messages) leaves no
    room for the kept turns: the request is refused, and no summary, which a provider bills, is asked for first."""
    calls = []

    async def summarize(dropped):
        calls.append(len(dropped))
        return "they talked about questions"

    messages = conversation()
    body = {"messages": messages}
    cap = count_chat_tokens(messages, model=MODEL) // 2
    if crowded_by == "system messages":
        body["messages"] = [{"role": "system", "content": "rule " * cap}, *messages[1:]]
    else:
        body["tools"] = TOOLS
        cap = count_text_tokens(orjson.dumps(TOOLS).decode(), model=MODEL) + 10

    with pytest.raises(TokenCapExceeded, match="after compressing"):
        await apply_token_caps(
            body,
            decision=decision(prompt_token_cap=cap, over_cap_action="compress"),
            model=MODEL,
            summarize=summarize,
            namespace=uuid.uuid4().hex,
        )
    assert calls == []


@async_test
async def test_the_dropped_middle_is_summarized_once_per_history():
    calls = []

    async def summarize(dropped):
        calls.append(len(dropped))
        return "they talked about questions 0 to 3"

    messages = conversation()
    budget = count_chat_tokens(messages, model=MODEL) // 2
    namespace = uuid.uuid4().hex  # Redis keeps summaries between runs
    first = await compress_messages(messages, budget=budget, model=MODEL, summarize=summarize, namespace=namespace)
    second = await compress_messages(messages, budget=budget, model=MODEL, summarize=summarize, namespace=namespace)
    assert first.summarized and second.summarized
    assert len(calls) == 1
    summary = first.messages[1]
    assert summary["role"] == "user" and "questions 0 to 3" in summary["content"]
    assert first.tokens_after <= budget
    assert first.messages == second.messages
    summary_cache._entries.clear()


@async_test
async def test_a_failing_summarizer_only_costs_the_summary():
    async def summarize(dropped):
        raise RuntimeError("upstream down")

    messages = conversation()
    budget = count_chat_tokens(messages, model=MODEL) // 2
    result = await compress_messages(
        messages, budget=budget, model=MODEL, summarize=summarize, namespace=uuid.uuid4().hex
    )
    assert not result.summarized
    assert result.dropped_messages > 0 and result.tokens_after <= budget


@pytest.mark.parametrize(
    ("body", "cap", "default", "expected"),
    [
        ({}, 500, 200, {"max_tokens": 200}),
        ({}, 500, None, {"max_tokens": 500}),
        ({}, None, None, {}),
        ({"max_tokens": 900}, 500, 200, {"max_tokens": 500}),
        ({"max_completion_tokens": 900}, 500, None, {"max_completion_tokens": 500}),
        ({"max_tokens": 100}, 500, 200, {"max_tokens": 100}),
        ({"max_tokens": 9000}, None, 200, {"max_tokens": 9000}),
    ],
)
def test_max_tokens_is_clamped_to_the_cap_or_set_to_the_default(body, cap, default, expected):
    assert clamp_max_tokens(body, cap=cap, default=default) == expected


DEFAULT_POLICY = compile_policy(default_policy_document(small_model="small", large_model="large"), version=1)
# 600,000 bytes: at least 4,688 tokens in any encoding in use, over the default template's cap of 4,000 (which it
# compresses to) and under its ceiling of 32,000.
HUGE_PROMPT = [{"role": "user", "content": "word " * 120_000}]
# 4,200,000 bytes: at least 32,813 tokens, over the default template's ceiling.
OVER_THE_CEILING = [{"role": "user", "content": "word " * 840_000}]


def uncountable(*args, **kwargs):
    raise AssertionError("the prompt was counted")


@pytest.mark.parametrize("requested", ["auto", "gpt-4o"])
def test_a_prompt_its_length_proves_over_the_default_ceiling_is_refused_uncounted(requested, monkeypatch):
    monkeypatch.setattr(tokens, "count_chat_tokens", uncountable)

    refusal = cap_refusal_before_counting(DEFAULT_POLICY, OVER_THE_CEILING, requested_model=requested)

    assert (refusal.status, refusal.code, refusal.cap) == (400, "token_cap_exceeded", 32000)
    assert (
        f"has at least {chat_tokens_lower_bound(OVER_THE_CEILING)} tokens, over the cap of 32000 tokens of routing "
        "rule 'too-long-to-compress'."
    ) in refusal.message


def rules_policy(*rules: dict):
    return compile_policy(
        {"rules": [{"priority": index, "name": f"rule-{index}", **rule} for index, rule in enumerate(rules, 1)]}
    )


REJECT_4000 = {"outcome": {"prompt_token_cap": 4000, "over_cap_action": "reject"}}


@pytest.mark.parametrize(
    ("policy", "messages"),
    [
        (None, HUGE_PROMPT),
        (DEFAULT_POLICY, [{"role": "user", "content": "word " * 10_000}]),
        (DEFAULT_POLICY, HUGE_PROMPT),
        (rules_policy({"outcome": {"prompt_token_cap": 4000, "over_cap_action": "compress"}}), HUGE_PROMPT),
        (rules_policy({"match": {"task_types": ["chat"]}, **REJECT_4000}), HUGE_PROMPT),
        (rules_policy({"match": {"task_types": ["chat"]}, "outcome": {}}, REJECT_4000), HUGE_PROMPT),
        (rules_policy({"match": {"prompt_tokens_min": 10_000}, **REJECT_4000}), HUGE_PROMPT),
        (rules_policy({"outcome": {"prompt_token_cap": 100_000, "over_cap_action": "reject"}}), HUGE_PROMPT),
    ],
    ids=[
        "no-policy",
        "under-the-bound",
        "the-default-compresses-under-its-ceiling",
        "compress",
        "no-rule-sure-to-match",
        "an-uncapped-rule-may-match",
        "minimum-over-the-bound",
        "cap-over-the-bound",
    ],
)
def test_no_refusal_before_counting_unless_every_rule_that_could_apply_refuses(policy, messages):
    assert cap_refusal_before_counting(policy, messages, requested_model="gpt-4o") is None


def test_when_several_rules_may_refuse_the_refusal_names_none_and_gives_the_highest_cap():
    policy = rules_policy(
        {"match": {"task_types": ["chat"]}, "outcome": {"prompt_token_cap": 3000, "over_cap_action": "reject"}},
        REJECT_4000,
    )

    refusal = cap_refusal_before_counting(policy, HUGE_PROMPT, requested_model="gpt-4o")

    assert refusal.cap == 4000 and "of routing rule" not in refusal.message


def test_a_rule_whose_maximum_is_under_the_bound_cannot_match_and_is_passed_over():
    policy = rules_policy({"match": {"prompt_tokens_max": 1000}, "outcome": {}}, REJECT_4000)

    assert cap_refusal_before_counting(policy, HUGE_PROMPT, requested_model="gpt-4o").cap == 4000


@async_test
async def test_a_decision_whose_cap_the_length_proves_exceeded_refuses_without_counting(monkeypatch):
    monkeypatch.setattr(caps, "count_prompt_tokens_async", uncountable)

    with pytest.raises(TokenCapExceeded, match="has at least"):
        await apply_token_caps({"messages": HUGE_PROMPT}, decision=decision(prompt_token_cap=4000), model=MODEL)


@async_test
async def test_one_huge_message_is_truncated_to_fit_exactly():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "lorem ipsum " * 50_000}]

    result = await compress_messages(messages, budget=200, model=MODEL)

    assert result.truncated and TRUNCATION_MARKER in result.messages[1]["content"]
    assert result.tokens_before == count_chat_tokens(messages, model=MODEL)
    assert result.tokens_after == count_chat_tokens(result.messages, model=MODEL)
    assert 190 <= result.tokens_after <= 200
