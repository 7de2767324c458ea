"""The answer guard's hold-back on a streamed answer, however the answer is cut into chunks: nothing of a secret goes
out, a clean answer goes out whole and in order, and it blocks exactly what the guard blocks in a complete answer."""

from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.injection_guard import SecretEchoBlocked, guard_answer, inspect_answer
from routing.stream_guard import HOLD_BACK_CHARS, UNBOUNDED_CAP_CHARS, AnswerHoldBack, AnswerTexts, chunk_texts

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


# A JWT longer than the hold-back: its start is long gone from a window of the hold-back's length when it ends.
LONG_JWT = "eyJ" + "hb" * 300 + ".eyJ" + "pl" * 300 + "." + "S" * 43
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


@settings(max_examples=150, deadline=None)
@given(cuts=cuts, secret=st.sampled_from([PROVIDER_KEY, SHAPED_KEY, "AKIAIOSFODNN7EXAMPLE", LONG_JWT]))
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
FRAGMENTS += ["eyJ", "abcde", "Bearer", "  ", "aws_secret", "=", '"', "\n", "wJalrXUtnFEMIK7MDENG"]


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


def test_content_before_a_tool_call_waits_for_the_stream_to_end():
    hold_back = AnswerHoldBack([])
    opening, call = chunk("content", "Let me look that up."), chunk("tool_calls", "x" * 1000)
    finishing = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}

    assert hold_back.take(event(opening), opening) == []
    assert hold_back.take(event(call), call) == []
    assert hold_back.take(event(finishing), finishing) == []
    assert hold_back.finish() == [event(opening), event(call), event(finishing)]


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


def jwt_of(length: int) -> str:
    """A JWT of about `length` characters: a long header and payload, a signature of 43."""
    body = (length - 43 - 2) // 2
    return "eyJ" + "a" * (body - 3) + ".eyJ" + "b" * (body - 3) + "." + "S" * 43


@pytest.mark.parametrize("size", [1_024, 1_536])
@pytest.mark.parametrize("step", [5, 7])
def test_a_credential_longer_than_the_hold_back_is_held_back_whole(size, step):
    """A JWT has no length bound: its start is held until it can no longer be one, so no piece of it goes out."""
    token = jwt_of(size)
    answer = BEFORE + token + AFTER
    assert inspect_answer([answer], action="block").blocked

    sent, blocked = relay(pieces_of(answer, list(range(step, len(answer), step))), known_secrets=())

    assert blocked and BEFORE.startswith(sent_text(sent))


@pytest.mark.parametrize(
    "opening",
    ["Authorization: Bearer" + " " * 600, "aws_secret_access_key =" + " " * 600, 'aws_secret"' + "\n" * 600 + ":"],
)
def test_a_labelled_credential_after_a_long_gap_is_held_back_whole(opening):
    """A bearer token or a labelled AWS secret key may follow its label after any run of spaces."""
    token = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEYab"
    answer = BEFORE + opening + token + AFTER
    assert inspect_answer([answer], action="block").blocked
    shape_start = answer.index("Bearer" if "Bearer" in opening else "aws_secret")

    sent, blocked = relay(pieces_of(answer, list(range(5, len(answer), 5))), known_secrets=())

    assert blocked and answer[:shape_start].startswith(sent_text(sent))


def test_a_value_shaped_like_the_start_of_a_credential_past_the_cap_blocks_the_stream():
    """Held rather than sent, but not forever: past the cap the stream is blocked as showing a secret."""
    answer = BEFORE + "eyJ" + "a" * (UNBOUNDED_CAP_CHARS + 100) + AFTER

    sent, blocked = relay(pieces_of(answer, list(range(50, len(answer), 50))), known_secrets=())

    assert blocked and "eyJ" not in sent_text(sent)


def test_a_value_that_stops_being_a_credential_goes_out_after_all():
    """An `eyJ…` run that ends unlike a JWT (a space) is released: it was held only while it might be one."""
    answer = BEFORE + "eyJ" + "a" * 1_000 + " and more text" * 40
    pieces = pieces_of(answer, list(range(7, len(answer), 7)))

    sent, blocked = relay(pieces, known_secrets=())

    assert not blocked and sent_text(sent) == answer


@pytest.mark.parametrize("index", [0, None])
def test_tool_calls_sharing_an_index_in_one_delta_are_all_checked(index):
    calls = [{"index": index, "function": {"arguments": piece}} for piece in ('{"q": "', SHAPED_KEY, '"}')]
    chunk_ = {"choices": [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}]}

    hold_back = AnswerHoldBack([])
    with pytest.raises(SecretEchoBlocked):
        hold_back.take(event(chunk_), chunk_)
        hold_back.finish()
    texts = AnswerTexts()
    texts.add(chunk_)
    assert inspect_answer(texts.texts(), action="block").blocked


def test_a_null_tool_call_index_is_the_call_s_position():
    calls = [{"index": None, "function": {"arguments": "a"}}, {"index": None, "function": {"arguments": "b"}}]

    assert chunk_texts({"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}) == [
        ((0, "tool_calls[0]"), "a"),
        ((0, "tool_calls[1]"), "b"),
    ]


@pytest.mark.parametrize(
    "delta",
    [
        {"reasoning_content": f"The key is {SHAPED_KEY}."},
        {"reasoning": f"The key is {SHAPED_KEY}."},
        {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": {"key": SHAPED_KEY}}}]},
        {"function_call": {"name": "f", "arguments": {"key": SHAPED_KEY}}},
    ],
)
def test_reasoning_and_object_arguments_are_guarded(delta):
    streamed = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    hold_back = AnswerHoldBack([])

    with pytest.raises(SecretEchoBlocked):
        assert hold_back.take(event(streamed), streamed) == []
        hold_back.finish()
    texts = AnswerTexts()
    texts.add(streamed)
    assert inspect_answer(texts.texts(), action="block").blocked
    message = {"role": "assistant", "content": None, **delta}
    with pytest.raises(SecretEchoBlocked):
        guard_answer({"choices": [{"index": 0, "message": message}]}, action="block")


def test_text_written_after_its_choice_finished_is_held_again():
    """A provider that sends a finish reason and then more of the choice (each chunk finishing it again)."""
    hold_back, sent = AnswerHoldBack([]), []
    events = [chunk("content", BEFORE, finish="stop")]
    events += [chunk("content", piece, finish="stop") for piece in pieces_of(SHAPED_KEY, list(range(5, 60, 5)))]

    with pytest.raises(SecretEchoBlocked):
        for data in events:
            sent += hold_back.take(event(data), data)
        sent += hold_back.finish()

    assert BEFORE.startswith(sent_text(sent))


@pytest.mark.parametrize(
    ("secret", "cut"),
    [(SHAPED_KEY, 3), (SHAPED_KEY, 12), (PROVIDER_KEY, 9), ("AKIAIOSFODNN7EXAMPLE", 10), (LONG_JWT, 700)],
)
def test_a_secret_split_by_a_finish_reason_of_its_choice_is_held_back_whole(secret, cut):
    """The end of a choice's text at its finish reason is no end: the provider may write to the choice after it."""
    written = [chunk("content", BEFORE + secret[:cut], finish="stop"), chunk("content", secret[cut:] + AFTER)]
    hold_back, sent = AnswerHoldBack([PROVIDER_KEY]), []

    with pytest.raises(SecretEchoBlocked):
        for data in [*written, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]:
            sent += hold_back.take(event(data), data)
        sent += hold_back.finish()

    assert BEFORE.startswith(sent_text(sent))
