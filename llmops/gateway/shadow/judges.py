"""How two answers to one request are compared: the pure part of shadow evaluation's judges.

* exact task types (settings.exact_task_types, e.g. classification, extraction): equal as JSON when both answers
  parse as JSON (a Markdown code fence around it is ignored), else equal as text after trimming and case-folding;
* with a judge model: an LLM judge asked, with a rubric, whether the candidate is equivalent to, worse or better than
  the reference, answering JSON; equivalent and better agree;
* otherwise: the cosine similarity of the two answers' embeddings (the semantic cache's embedder) at or above
  settings.similarity_threshold.
"""

import re
from dataclasses import dataclass

import numpy as np
import orjson

from billing.models import EvaluationSettings, JudgeMethod, JudgeVerdict
from routing.providers.base import message_text

CODE_FENCE = re.compile(r"\A```[\w-]*\s*\n(.*?)\n?```\Z", re.DOTALL)
VERDICT_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
AGREEING_VERDICTS = (JudgeVerdict.EQUIVALENT, JudgeVerdict.BETTER)
# The request as the judge reads it: its end, where the question is, when it is longer than this.
JUDGE_REQUEST_CHARS = 6000
JUDGE_ANSWER_CHARS = 4000
JUDGE_MAX_TOKENS = 200
JUDGE_RUBRIC = (
    "You compare two answers to the same request. The reference answer is the one to match; the candidate answer "
    "was produced more cheaply. Judge the candidate against the reference for this request: 'equivalent' when it is "
    "as correct, complete and useful (wording may differ), 'worse' when it is wrong, misses something the reference "
    "has, or is less useful, 'better' when it is clearly more correct or useful. Answer with JSON only, no other "
    'text: {"verdict": "equivalent" | "worse" | "better", "reason": "<one short sentence>"}'
)


@dataclass(frozen=True, slots=True)
class Judgement:
    method: JudgeMethod
    agrees: bool
    verdict: str = ""
    similarity: float | None = None
    reason: str = ""


def judge_method(settings: EvaluationSettings, task_type: str) -> JudgeMethod:
    """EXACT stands for exact or JSON equality (which one is known once the answers are read)."""
    exact_types = {name.strip().casefold() for name in settings.exact_task_types.split(",") if name.strip()}
    if task_type.strip().casefold() in exact_types:
        return JudgeMethod.EXACT
    return JudgeMethod.LLM if settings.judge_model_id is not None else JudgeMethod.EMBEDDING


def _unfenced(text: str) -> str:
    text = text.strip()
    fenced = CODE_FENCE.match(text)
    return fenced.group(1).strip() if fenced else text


def _json(text: str):
    try:
        return True, orjson.loads(_unfenced(text))
    except orjson.JSONDecodeError:
        return False, None


def exact_judgement(reference: str, candidate: str) -> Judgement:
    (reference_is_json, reference_value), (candidate_is_json, candidate_value) = _json(reference), _json(candidate)
    if reference_is_json and candidate_is_json:
        return Judgement(method=JudgeMethod.JSON, agrees=reference_value == candidate_value)
    agrees = reference.strip().casefold() == candidate.strip().casefold()
    return Judgement(method=JudgeMethod.EXACT, agrees=agrees)


def embedding_judgement(vectors: np.ndarray, *, threshold: float) -> Judgement:
    """From the unit-length embeddings of the reference and the candidate (rows 0 and 1)."""
    similarity = float(np.dot(vectors[0], vectors[1]))
    return Judgement(method=JudgeMethod.EMBEDDING, agrees=similarity >= threshold, similarity=similarity)


def _transcript(messages: list) -> str:
    lines = [f"{message.get('role')}: {message_text(message.get('content'))}" for message in messages]
    return "\n".join(lines)[-JUDGE_REQUEST_CHARS:]


def judge_messages(messages: list, *, reference: str, candidate: str) -> list[dict]:
    """The LLM judge's prompt: the rubric, then the request, the reference and, last, the candidate."""
    prompt = (
        f"Request:\n{_transcript(messages)}\n\n"
        f"Reference answer:\n{reference[:JUDGE_ANSWER_CHARS]}\n\n"
        f"Candidate answer:\n{candidate[:JUDGE_ANSWER_CHARS]}"
    )
    return [{"role": "system", "content": JUDGE_RUBRIC}, {"role": "user", "content": prompt}]


def llm_judgement(answer: str) -> Judgement | None:
    """The judge's verdict; None when its answer holds no readable one (such an evaluation is not recorded)."""
    found = VERDICT_OBJECT.search(_unfenced(answer))
    if found is None:
        return None
    try:
        parsed = orjson.loads(found.group(0))
    except orjson.JSONDecodeError:
        return None
    verdict = parsed.get("verdict") if isinstance(parsed, dict) else None
    if not isinstance(verdict, str) or verdict.strip().lower() not in JudgeVerdict.values:
        return None
    verdict = JudgeVerdict(verdict.strip().lower())
    reason = parsed.get("reason")
    return Judgement(
        method=JudgeMethod.LLM,
        agrees=verdict in AGREEING_VERDICTS,
        verdict=verdict.value,
        reason=reason[:1000] if isinstance(reason, str) else "",
    )
