"""The judges of shadow evaluation: exact or JSON equality for exact task types, an LLM judge's verdict, embedding
similarity with the semantic cache's embedder."""

from decimal import Decimal

import pytest

from billing.models import EvaluationSettings, JudgeMethod
from llmops.gateway.shadow.judges import (
    embedding_judgement,
    exact_judgement,
    judge_messages,
    judge_method,
    llm_judgement,
)
from routing.cache.embedders import configured_embedder


@pytest.mark.parametrize(
    ("reference", "candidate", "method", "agrees"),
    [
        ("billing", " Billing\n", JudgeMethod.EXACT, True),
        ("billing", "technical", JudgeMethod.EXACT, False),
        ('{"name": "Ada", "age": 36}', '{"age": 36, "name": "Ada"}', JudgeMethod.JSON, True),
        ('{"name": "Ada"}', '```json\n{"name": "Ada"}\n```', JudgeMethod.JSON, True),
        ('{"name": "Ada", "age": 36}', '{"name": "Ada", "age": 37}', JudgeMethod.JSON, False),
        ('{"name": "Ada"}', "name: Ada", JudgeMethod.EXACT, False),
    ],
)
def test_exact_task_types_agree_only_on_equal_answers(reference, candidate, method, agrees):
    judgement = exact_judgement(reference, candidate)

    assert (judgement.method, judgement.agrees) == (method, agrees)


def test_the_method_follows_the_task_type_and_the_judge_model():
    settings = EvaluationSettings(exact_task_types="classification, Extraction")

    assert judge_method(settings, "classification") == JudgeMethod.EXACT
    assert judge_method(settings, "extraction") == JudgeMethod.EXACT
    assert judge_method(settings, "chat") == JudgeMethod.EMBEDDING
    settings.judge_model_id = 1
    assert judge_method(settings, "chat") == JudgeMethod.LLM
    assert judge_method(settings, "classification") == JudgeMethod.EXACT


@pytest.mark.parametrize(
    ("answer", "verdict", "agrees"),
    [
        ('{"verdict": "equivalent", "reason": "Same facts."}', "equivalent", True),
        ('```json\n{"verdict": "Better", "reason": "More precise."}\n```', "better", True),
        ('Here you go: {"verdict": "worse", "reason": "Wrong total."}', "worse", False),
    ],
)
def test_the_llm_judge_s_verdict_is_read_from_its_json(answer, verdict, agrees):
    judgement = llm_judgement(answer)

    assert (judgement.method, judgement.verdict, judgement.agrees) == (JudgeMethod.LLM, verdict, agrees)
    assert judgement.reason


@pytest.mark.parametrize("answer", ["They are the same.", '{"verdict": "maybe"}', '{"verdict": 1}', "{not json}", "[]"])
def test_an_llm_judge_answer_without_a_readable_verdict_is_no_judgement(answer):
    assert llm_judgement(answer) is None


def test_the_judge_reads_the_rubric_the_request_and_the_candidate_last():
    messages = judge_messages(
        [{"role": "user", "content": "What is 2+2?"}], reference="4", candidate="Four, of course."
    )

    assert messages[0]["role"] == "system" and '"verdict"' in messages[0]["content"]
    prompt = messages[1]["content"]
    assert prompt.index("What is 2+2?") < prompt.index("Reference answer:\n4") < prompt.index("Candidate answer:")
    assert prompt.endswith("Candidate answer:\nFour, of course.")


def test_embedding_similarity_agrees_with_a_rewording_and_not_with_another_answer():
    embedder = configured_embedder()
    reference = "Your refund of 40 euros was sent to your card and arrives within five days."
    same = embedder.embed([reference, "Your refund of 40 euros was sent to your card; it arrives within 5 days."])
    other = embedder.embed([reference, "Our office is closed on public holidays."])

    close, far = embedding_judgement(same, threshold=0.85), embedding_judgement(other, threshold=0.85)

    assert close.method == JudgeMethod.EMBEDDING and close.agrees and close.similarity > 0.85
    assert not far.agrees and far.similarity < 0.5
    assert not embedding_judgement(same, threshold=float(Decimal("0.9999"))).agrees
