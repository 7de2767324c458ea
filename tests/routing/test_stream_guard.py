"""The answer guard's hold-back on a streamed answer, however the answer is cut into chunks: nothing of a secret goes
out, a clean answer goes out whole and in order, and it blocks exactly what the guard blocks in a complete answer."""

from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.injection_guard import SecretEchoBlocked, guard_answer, inspect_answer
from routing.stream_guard import HOLD_BACK_CHARS, AnswerHoldBack, AnswerTexts, chunk_texts

PROVIDER_KEY = "mockcred-7f3a9c0b51d2e4f8a6"
SHAPED_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2oPq5sTu8wXy1zAb4dEf7hIj0k"
BEFORE = "Sure, here is what you asked for. The value is "
AFTER = " and that is all there is to it; anything else I can help with today?"
CLEAN = (
    "Our risk-assessment-framework-for-the-2025-audit covers the ASIAPACIFICHEADQUARTERS region, the "
    "task-management-dashboard-for-support-teams and disk-encryption-key-rotation-schedules. " * 6
)


def chunk(field: str, piece: str, *, index: int = 0, finish: str | None = None) -> dict:
    """A chunk writing `piece` to its choice's content or refusal, to its tool call's or function call's arguments."""
    deltas = {
        "tool_calls": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
        "function_call": {"function_call": {"arguments": piece}},
    }
    delta = deltas.get(field, {field: piece})
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def event(data: dict) -> str:
    return "data: " + orjson.dumps(data).decode()


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted({cut % (len(text) + 1) for cut in cuts}), len(text)]
    return [text[start:end] for start, end in pairwise(bounds) if end > start]


def relay(pieces: list[str], *, field: str = "content", known_secrets=(PROVIDER_KEY,)) -> tuple[list[str], bool]:
    """The events a hold-back lets out for a stream of `pieces` (then a finishing chunk and [DONE]), and whether it
    blocked the stream."""
    hold_back, sent = AnswerHoldBack(known_secrets), []
    events = [event(chunk(field, piece)) for piece in pieces] + [event(chunk("content", "", finish="stop"))]
    try:
        for raw in events:
            sent += hold_back.take(raw, orjson.loads(raw[6:]))
        sent += hold_back.finish()
    except SecretEchoBlocked:
        return sent, True
    return sent, False


def sent_text(events: list[str]) -> str:
    return "".join(text for raw in events for _, text in chunk_texts(orjson.loads(raw[6:])))


cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


@settings(max_examples=150, deadline=None)
@given(cuts=cuts, secret=st.sampled_from([PROVIDER_KEY, SHAPED_KEY, "AKIAIOSFODNN7EXAMPLE"]))
def test_no_character_of_a_secret_goes_out_however_the_answer_is_cut(cuts, secret):
    answer = BEFORE + secret + AFTER

    sent, blocked = relay(pieces_of(answer, cuts))

    assert blocked
    assert BEFORE.startswith(sent_text(sent))


@settings(max_examples=50, deadline=None)
@given(cuts=cuts)
def test_a_secret_in_tool_call_arguments_is_held_back_too(cuts):
    arguments = '{"query": "' + SHAPED_KEY + '", "limit": 10}'

    sent, blocked = relay(pieces_of(arguments, cuts), field="tool_calls")

    assert blocked and '{"query": "'.startswith(sent_text(sent))


@settings(max_examples=100, deadline=None)
@given(cuts=cuts)
def test_a_clean_answer_goes_out_whole_and_in_order(cuts):
    pieces = pieces_of(CLEAN, cuts)

    sent, blocked = relay(pieces)

    assert not blocked
    assert sent == [event(chunk("content", piece)) for piece in pieces] + [event(chunk("content", "", finish="stop"))]


# Pieces of credential shapes and what keeps them from being one, to build answers near the edge.
FRAGMENTS = ["sk-", "proj-", "ri", "AKIA", "ASIA", "IOSFODNN7", "EXAMPLE", "X", "ab", "12", "-", "_", " ", ".", "AIza"]


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=60), cuts=cuts)
def test_it_blocks_exactly_what_the_guard_blocks_in_the_complete_answer(words, cuts):
    answer = "".join(words)

    _, blocked = relay(pieces_of(answer, cuts), known_secrets=())

    assert blocked == inspect_answer([answer], action="block").blocked


def test_the_answer_goes_out_the_hold_back_behind_what_arrived():
    pieces = ["word " * 2] * 200  # 2,000 characters in pieces of 10

    hold_back = AnswerHoldBack([PROVIDER_KEY])
    sent = [raw for piece in pieces for raw in hold_back.take(event(chunk("content", piece)), chunk("content", piece))]

    assert 2_000 - HOLD_BACK_CHARS - 10 < len(sent_text(sent)) <= 2_000 - HOLD_BACK_CHARS


def test_a_provider_key_longer_than_the_hold_back_holds_back_its_length():
    long_key = "svc-account-" + "0123456789abcdef" * 40

    sent, blocked = relay(
        pieces_of(BEFORE + "x " * 400 + long_key + AFTER, list(range(0, 2000, 7))), known_secrets=[long_key]
    )

    assert AnswerHoldBack([long_key]).hold_chars == len(long_key)
    assert blocked and long_key[:4] not in sent_text(sent)


def test_texts_are_told_apart_by_choice_and_field():
    """Half a key in one choice and half in another is no key, as in a complete answer of two choices."""
    half = len(PROVIDER_KEY) // 2
    hold_back = AnswerHoldBack([PROVIDER_KEY])
    first, second = chunk("content", PROVIDER_KEY[:half], index=0), chunk("content", PROVIDER_KEY[half:], index=1)

    hold_back.take(event(first), first)
    hold_back.take(event(second), second)

    assert len(hold_back.finish()) == 2
    texts = AnswerTexts()
    texts.add(first)
    texts.add(second)
    assert texts.texts() == [PROVIDER_KEY[:half], PROVIDER_KEY[half:]]


def test_content_before_a_tool_call_waits_for_the_choice_to_finish():
    hold_back = AnswerHoldBack([])
    opening, call = chunk("content", "Let me look that up."), chunk("tool_calls", "x" * 1000)
    finishing = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}

    assert hold_back.take(event(opening), opening) == []
    assert hold_back.take(event(call), call) == []
    assert hold_back.take(event(finishing), finishing) == [event(opening), event(call), event(finishing)]


@pytest.mark.parametrize("field", ["refusal", "tool_calls", "function_call"])
def test_refusals_and_call_arguments_are_guarded(field):
    _, blocked = relay([BEFORE, SHAPED_KEY[:10], SHAPED_KEY[10:], AFTER], field=field)

    assert blocked


@pytest.mark.parametrize("overlap", range(HOLD_BACK_CHARS - 4, HOLD_BACK_CHARS + 4))
def test_a_word_cut_at_the_window_start_is_not_taken_for_a_credential(overlap):
    """`risk-assessment-…` holds no `sk-…` key; nor does the window of a piece that starts inside it."""
    answer = "x " * 150 + "risk-assessment-framework-for-the-audit" + " y" * 150
    cut = answer.index("sk-") + overlap

    _, blocked = relay([answer[:cut], answer[cut:]], known_secrets=())

    assert not blocked


@pytest.mark.parametrize("word", ["ASIAPACIFICHEADQUARTERS", "AIza" + "b" * 35 + "cdef"])
def test_a_word_cut_where_a_credential_would_end_is_not_taken_for_one(word):
    """An AWS key id is 20 characters, a Google API key 39: a longer word cut there is neither."""
    cut = len(BEFORE) + (20 if word.startswith("ASIA") else 39)
    answer = BEFORE + word + AFTER

    _, blocked = relay([answer[:cut], answer[cut:]], known_secrets=())

    assert not blocked


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None, "refusal": f"I won't share {SHAPED_KEY}."},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": SHAPED_KEY}},
    ],
)
def test_a_complete_answer_is_checked_where_a_stream_is(message):
    with pytest.raises(SecretEchoBlocked):
        guard_answer({"choices": [{"index": 0, "message": message}]}, action="block")
