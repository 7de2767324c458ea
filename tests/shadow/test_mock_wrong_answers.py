"""The mock upstream's controlled wrong answers: a `wrong-<N>` model gets N% of classification labels wrong, the same
prompts every time; any other model none."""

import httpx
import orjson
import pytest

from llmops.mock_upstream import classification_answer, classification_labels

LABELS = ["billing", "technical", "account", "other"]
SYSTEM = {"role": "system", "content": f"Classify the ticket.\nLabels: {', '.join(LABELS)}"}


def ticket(index: int) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": f"Ticket {index}: my invoice number {index * 7919} looks wrong"}]


def wrong_share(model: str, prompts: int = 500) -> float:
    wrong = sum(
        classification_answer(ticket(i), LABELS, model) != classification_answer(ticket(i), LABELS, "mock-large")
        for i in range(prompts)
    )
    return wrong / prompts


def test_the_labels_line_makes_a_prompt_a_classification():
    assert classification_labels(ticket(1)) == LABELS
    assert classification_labels([{"role": "user", "content": "labels:  a , b,, a"}]) == ["a", "b"]
    assert classification_labels([{"role": "user", "content": "Which labels fit? a, b"}]) == []


@pytest.mark.parametrize("percent", [5, 20, 50])
def test_a_wrong_model_misses_about_its_share_of_distinct_prompts(percent):
    # 500 prompts: the binomial's standard deviation is at most 2.3 points; the hash is deterministic, so this is
    # the share these prompts always get.
    assert abs(wrong_share(f"mock-small-wrong-{percent}") - percent / 100) < 0.05


def test_a_model_without_wrong_in_its_name_is_never_wrong():
    assert wrong_share("mock-small") == 0
    assert wrong_share("mock-small-wrong-0") == 0


def test_a_wrong_answer_is_one_of_the_labels_and_the_same_every_time():
    answers = [classification_answer(ticket(i), LABELS, "mock-small-wrong-50") for i in range(50)]

    assert set(answers) <= set(LABELS)
    assert answers == [classification_answer(ticket(i), LABELS, "mock-small-wrong-50") for i in range(50)]


def test_the_label_depends_on_the_last_user_message_only():
    longer_history = [SYSTEM, {"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}]
    longer_history.append(ticket(3)[-1])

    assert classification_answer(longer_history, LABELS, "m") == classification_answer(ticket(3), LABELS, "m")


def chat(url: str, model: str, messages: list[dict], **extra) -> httpx.Response:
    body = {"model": model, "messages": messages, "max_tokens": 5, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def test_over_http_streamed_or_not_the_mock_answers_the_label(mock_upstream):
    expected = [classification_answer(ticket(i), LABELS, "mock-small-wrong-50") for i in range(20)]

    plain = [chat(mock_upstream.url, "mock-small-wrong-50", ticket(i)).json() for i in range(20)]
    streamed = chat(mock_upstream.url, "mock-small-wrong-50", ticket(0), stream=True).text

    assert [answer["choices"][0]["message"]["content"] for answer in plain] == expected
    assert all(answer["usage"]["completion_tokens"] == 5 for answer in plain)
    pieces = [
        orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in streamed.splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(pieces) == expected[0]


def test_a_judge_model_says_whether_the_two_answers_agree(mock_upstream):
    def verdict(reference: str, candidate: str) -> dict:
        prompt = f"Request:\nuser: Labels: a, b\n\nReference answer:\n{reference}\n\nCandidate answer:\n{candidate}"
        answer = chat(mock_upstream.url, "mock-judge", [{"role": "user", "content": prompt}], max_tokens=50).json()
        return orjson.loads(answer["choices"][0]["message"]["content"])

    assert verdict("Billing", " billing ")["verdict"] == "equivalent"
    assert verdict("billing", "technical")["verdict"] == "worse"
