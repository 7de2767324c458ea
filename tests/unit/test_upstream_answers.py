"""What an upstream answer must be before the gateway prices it: the shapes accepted and refused, and the usage
ceiling of a request."""

import asyncio
import re
import threading
from decimal import Decimal

import orjson
import pytest

from billing.ledger.costs import Usage
from core.cpu import OFFLOAD_MIN_CHARS
from llmops.gateway.call import USAGE_SLACK, UsageCeiling, estimated_usage
from routing import tokens
from routing.catalog import ModelEntry, ModelPrices, ProviderEntry
from routing.providers.base import MalformedAnswer, answer_text, billed_text, checked_chat_completion, checked_chunk

USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17, "prompt_tokens_details": {"cached_tokens": 0}}


def completion(**changes) -> dict:
    message = {"role": "assistant", "content": "Hello", "refusal": None}
    body = {"id": "x", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": USAGE}
    return {**body, **changes}


@pytest.mark.parametrize(
    "body",
    [
        completion(),
        completion(usage=None),
        completion(choices=[{"index": 0, "message": {"content": None, "tool_calls": [{"id": "c"}]}}]),
        # Some OpenAI-compatible providers send a message's content as parts.
        completion(choices=[{"message": {"content": [{"type": "text", "text": "Hi"}, {"type": "thinking"}]}}]),
        completion(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 12, "cache_write_tokens": None}}),
    ],
)
def test_a_chat_completion_the_gateway_can_read_is_accepted(body):
    assert checked_chat_completion(body) is body


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([completion()], "not a JSON object"),
        (completion(choices="abc"), "choices is not a list"),
        (completion(choices=[]), "choices is not a list"),
        (completion(choices=["abc"]), "choice is not an object"),
        (completion(choices=[{"message": "abc"}]), "message is not an object"),
        (completion(choices=[{"message": {"content": 5}}]), "content is not a string"),
        (completion(choices=[{"message": {"content": [{"type": "text", "text": 5}]}}]), "content is not a string"),
        (completion(choices=[{"message": {"tool_calls": "abc"}}]), "tool_calls is not a list"),
        (completion(choices=[{"index": "0", "message": {}}]), "index is not an integer"),
        (completion(usage="abc"), "usage is not an object"),
        (completion(usage={**USAGE, "prompt_tokens": "abc"}), "usage.prompt_tokens is 'abc'"),
        (completion(usage={**USAGE, "completion_tokens": -5}), "usage.completion_tokens is -5"),
        (completion(usage={**USAGE, "completion_tokens": 1e30}), "usage.completion_tokens is 1e+30"),
        (completion(usage={**USAGE, "completion_tokens": True}), "usage.completion_tokens is True"),
        (completion(usage={**USAGE, "completion_tokens": 10**9}), "not a count of tokens"),
        (completion(usage={"prompt_tokens": 3}), "usage.completion_tokens is None"),
        (completion(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 13}}), "more cached prompt tokens"),
    ],
)
def test_an_answer_that_cannot_be_read_or_priced_is_refused_saying_why(body, problem):
    with pytest.raises(MalformedAnswer, match=re.escape(problem)):
        checked_chat_completion(body)


def test_stream_chunks_are_checked_the_same_way():
    delta = {"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}
    assert checked_chunk(orjson.dumps({"choices": [delta]}).decode())["choices"] == [delta]
    assert checked_chunk(orjson.dumps({"choices": [], "usage": USAGE}).decode())["usage"] == USAGE
    for data, problem in [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"choices": "abc"}', "choices is not a list"),
        ('{"choices": [{"delta": {"content": [{"type": "text", "text": "a"}]}}]}', "content is not a string"),
        ('{"choices": [], "usage": {"prompt_tokens": -1, "completion_tokens": 0}}', "is -1"),
        ('{"model": 5, "choices": []}', "model is not a string"),
    ]:
        with pytest.raises(MalformedAnswer, match=re.escape(problem)):
            checked_chunk(data)


def test_the_text_of_an_answer_is_read_as_far_as_its_shape_allows():
    assert answer_text(completion()) == "Hello"
    assert answer_text(completion(choices=[{"message": {"content": [{"type": "text", "text": "Hi"}]}}, 5])) == "Hi"
    assert answer_text(completion(choices="abc")) == answer_text([1]) == ""


def test_an_answers_tool_calls_and_refusal_are_read_as_the_output_they_were_billed_as():
    """An answer without usage is charged by the gateway's count of its text: a tool call's arguments are output the
    model wrote, and billed, as a refusal is."""
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"order": 7}'}}
    legacy = {"name": "find", "arguments": '{"q": "x"}'}
    choices = [
        {"message": {"role": "assistant", "content": None, "tool_calls": [call]}},
        {"message": {"role": "assistant", "content": None, "function_call": legacy}},
        {"message": {"role": "assistant", "content": None, "refusal": "I can't."}},
    ]

    assert answer_text(completion(choices=choices)) == 'lookup{"order": 7}find{"q": "x"}I can\'t.'


def test_the_reasoning_an_answer_wrote_is_read_as_output_it_was_billed_as_once():
    """A reasoning model's thinking is billed as output tokens: an answer (or a stream's delta) without usage is
    charged it. vLLM has sent the same reasoning under both names, which was written, and billed, once; a reader of
    what the answer says leaves it out."""
    thinking = {"role": "assistant", "content": "Yes.", "reasoning_content": "Let me think. "}
    vllm = {"role": "assistant", "content": None, "reasoning_content": "Hmm. ", "reasoning": "Hmm. "}
    router = {"role": "assistant", "content": "No.", "reasoning": "Well, "}
    body = completion(choices=[{"message": thinking}, {"message": vllm}, {"message": router}])

    assert answer_text(body) == "Let me think. Yes.Hmm. Well, No."
    assert billed_text({"reasoning": "Hmm", "content": None}) == "Hmm"
    assert answer_text(body, reasoning=False) == "Yes.No."


MODEL = ModelEntry(
    name="m",
    upstream_name="gpt-4o-mini",
    provider=ProviderEntry(name="p", kind="openai", base_url="", api_key="", timeout_seconds=5.0),
    prices=ModelPrices(Decimal(1), Decimal(1), Decimal(1)),
    context_window=1000,
    max_output_tokens=500,
)


def test_usage_is_believed_up_to_a_multiple_of_what_the_request_could_take_and_produce():
    ceiling = UsageCeiling.of(MODEL, body={"messages": [], "max_tokens": 20, "n": 3}, prompt_tokens=10)
    assert (ceiling.prompt_tokens, ceiling.completion_tokens) == (USAGE_SLACK * 1000, USAGE_SLACK * 60)
    assert UsageCeiling.of(MODEL, body={"messages": []}, prompt_tokens=5000).prompt_tokens == USAGE_SLACK * 5000
    assert UsageCeiling.of(MODEL, body={"messages": []}, prompt_tokens=0).completion_tokens == USAGE_SLACK * 500

    believable = Usage(prompt_tokens=4000, completion_tokens=240)
    assert ceiling.check(believable) is believable
    too_many = re.escape("usage.completion_tokens is 241, more than this request allows (240)")
    with pytest.raises(MalformedAnswer, match=too_many):
        ceiling.check(Usage(prompt_tokens=1, completion_tokens=241))
    with pytest.raises(MalformedAnswer, match=re.escape("usage.prompt_tokens is 4001")):
        ceiling.check(Usage(prompt_tokens=4001, completion_tokens=1))


def test_the_gateways_own_count_of_a_large_prompt_runs_off_the_event_loop(monkeypatch):
    """A client can make the gateway count a prompt itself (by leaving a stream), so a large one is counted on the CPU
    pool like the routing count, and the loop keeps serving other tenants."""
    threads = []
    count = tokens.count_chat_tokens

    def spy(messages, *, model):
        threads.append(threading.current_thread().name)
        return count(messages, model=model)

    monkeypatch.setattr(tokens, "count_chat_tokens", spy)
    body = {"messages": [{"role": "user", "content": "x" * OFFLOAD_MIN_CHARS}]}

    usage = asyncio.run(estimated_usage(body, "partial answer", MODEL))

    assert usage.estimated and usage.prompt_tokens == count(body["messages"], model=MODEL.upstream_name)
    assert threads and threads[0].startswith("llmops-cpu")
