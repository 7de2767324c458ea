"""Shadow evaluation, off the request path: a sampled request's lever replayed against its reference and judged.

For one (request, lever): the worst cases of the reference call (routing.upstream, the provider path the gateway's
own calls take) and, for an LLM judge, of the judge's call, or for the embedding judge with a paid embedder
(HttpEmbedder) of its /embeddings call, are reserved together against the tenant's evaluation budget before the
first call, as one hold (billing.evaluation.budget) that is also the evaluation's claim: another run of the same
sample pays for nothing. Each call is metered in the ledger as a row of kind ``evaluation`` (parented to the sampled
request, charged to its key, team and customer, route ``shadow-evaluation``, cache ``bypass``, no savings: product
budgets and savings never count them) and settled with what it cost, a failed call too when the provider may bill
it; the hold ends with the evaluation. The judgement is one ShadowEvaluation row, written once per (request, lever).

The prompt is counted with tiktoken (OpenAI's tokenizer) and reserved as admission reserves it, with a margin for a
provider that counts with another tokenizer (llmops.gateway.chat.worst_case). An evaluation runs at most
its hold's bound (its calls' provider timeouts, each call made once, and HOLD_SLACK_SECONDS); past it, it is cut off
and counted unjudged, and a hold a dead worker left is given back by the beat task once past that bound.

An evaluation that cannot reach a verdict records no row, so agreement counts only real verdicts: one the budget
cannot cover is counted as ``refused`` on the month's EvaluationSpend, one whose reference or judge the tenant may no
longer use, whose reference call failed, whose LLM judge answered no readable verdict, whose paid embedding call
failed, that needs the embedder when it cannot load, or that ran past its bound, as ``unjudged``; each is logged.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings as django_settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.evaluation.budget import (
    EvaluationClaimed,
    evaluation_budget_reserve,
    evaluation_budget_settle,
    evaluation_hold_end,
    evaluation_unjudged_count,
)
from billing.ledger.costs import ZERO_USD, Usage, usage_cost
from billing.ledger.events import RequestFacts, UsageEvent
from billing.models import (
    CacheStatus,
    EvaluationHold,
    EvaluationSettings,
    JudgeMethod,
    Lever,
    ShadowEvaluation,
    UsageKind,
)
from core.crypto import CredentialDecryptionError
from core.db import database_sync_to_async
from llmops.gateway.call import estimated_usage, new_request_id, reply_usage
from llmops.gateway.chat.cache_embeddings import UNPRICED_MODEL, cache_embeddings_model
from llmops.gateway.chat.failed_attempts import billed_failure_usage
from llmops.gateway.chat.recording import record_usage
from llmops.gateway.chat.worst_case import OutputBound, body_worst_case, reserved_prompt_tokens
from llmops.gateway.errors import upstream_failure
from llmops.gateway.shadow.judges import (
    JUDGE_MAX_TOKENS,
    Judgement,
    embedding_judgement,
    exact_judgement,
    judge_messages,
    judge_method,
    llm_judgement,
)
from llmops.gateway.shadow.samples import ShadowSample, sample_open
from llmops.gateway.snapshot import config_snapshot
from routing import upstream
from routing.cache.embedders import configured_embedder
from routing.catalog import ModelCatalog, ModelEntry
from routing.max_tokens import requested_max_tokens, with_max_tokens
from routing.models import ModelKind
from routing.providers.prompt_cache import OFF
from routing.tokens import count_chat_tokens_async, count_prompt_tokens_async, count_text_tokens

logger = logging.getLogger(__name__)

EVALUATION_ROUTE = "shadow-evaluation"
# What a reference call does not repeat of the request: one non-streamed answer is compared.
NOT_REPEATED = ("stream", "stream_options", "n", "best_of")


# Each evaluation call is made once: no retry, no fallback.
CALL_ATTEMPTS = 1
# An evaluation's bound beyond its calls' timeouts: counting tokens, loading the embedder, database round trips.
HOLD_SLACK_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class MeteredAnswer:
    text: str
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """An evaluation call before it is made: its prompt as counted, and its worst case as reserved."""

    model: ModelEntry
    prompt_tokens: int
    worst_case_usd: Decimal


@dataclass(frozen=True, slots=True)
class EmbeddingJudge:
    """The embedder that judges by similarity. A paid one (``embed_metered``: HttpEmbedder) is metered: priced at the
    catalog's model for it (None: the catalog prices none, its calls recorded at 0 with UNPRICED_MODEL) and reserved
    at ``worst_case_usd``; a local one costs nothing."""

    embedder: object
    model: ModelEntry | None = None
    worst_case_usd: Decimal = ZERO_USD

    @property
    def metered(self) -> bool:
        return hasattr(self.embedder, "embed_metered")


def worst_case(model: ModelEntry, body: dict, *, prompt_tokens: int) -> Decimal:
    fallback = django_settings.LLMOPS_RESERVATION_MAX_TOKENS
    return body_worst_case(model, body, prompt_tokens=prompt_tokens, fallback=fallback, provider_cache=OFF)


def hold_seconds(models: list[ModelEntry]) -> float:
    """How long an evaluation calling ``models`` (one after another) may take: each provider's timeout, times the
    attempts a call gets, and HOLD_SLACK_SECONDS. Its hold expires then."""
    return sum(model.provider.timeout_seconds for model in models) * CALL_ATTEMPTS + HOLD_SLACK_SECONDS


def shadow_sample_open(sealed: str) -> ShadowSample | None:
    try:
        return sample_open(sealed)
    except CredentialDecryptionError:
        logger.error("shadow evaluation: a sample sealed under a key no longer configured was dropped")
        return None


def reference_body(sample: ShadowSample, lever: Lever, model: ModelEntry) -> dict:
    """The request as the reference answers it: the body as sent (the prompt before compression for that lever), one
    answer, not streamed, with a cap on its tokens so its worst case is a true bound."""
    body = {name: value for name, value in sample.body.items() if name not in NOT_REPEATED}
    if lever == Lever.COMPRESSION and sample.uncompressed_messages is not None:
        body["messages"] = sample.uncompressed_messages
    body["model"] = model.upstream_name
    if requested_max_tokens(body) is None and not model.max_output_tokens:
        body = with_max_tokens(body, django_settings.LLMOPS_RESERVATION_MAX_TOKENS)
    return body


def _ledger_event(
    sample: ShadowSample,
    model: ModelEntry,
    *,
    usage: Usage,
    http_status: int,
    error_code: str,
    started: float,
    tier: str | None = None,
) -> UsageEvent:
    event = _unpriced_event(
        sample, model.name, usage=usage, http_status=http_status, error_code=error_code, started=started
    )
    event.price(model.prices)
    # A reference repeats the sample's service_tier, and is charged at the tier that served it.
    event.flex_discount(tier=tier, multiplier=model.flex_price_multiplier)
    # Evaluation is spend, never a saving: a provider-cache or flex discount on a replayed prompt is not one the
    # product made.
    event.saved_provider_cache_usd = ZERO_USD
    event.saved_batch_usd = ZERO_USD
    return event


def _unpriced_event(
    sample: ShadowSample, served_model: str, *, usage: Usage, http_status: int, error_code: str, started: float
) -> UsageEvent:
    """An evaluation call's ledger row, at cost 0 until priced."""
    elapsed_ms = int((time.perf_counter() - started) * 1000)
    facts = RequestFacts(
        request_id=new_request_id(),
        created_at=timezone.now(),
        endpoint=sample.endpoint,
        requested_model=served_model,
        cache_status=CacheStatus.BYPASS,
        route=EVALUATION_ROUTE,
        attempts=1,
        tags=sample.tags,
        customer=sample.customer,
        kind=UsageKind.EVALUATION,
        parent_request_id=sample.request_id,
    )
    event = UsageEvent.of(
        facts,
        usage=usage,
        tenant_id=sample.tenant_id,
        team_id=sample.team_id,
        api_key_id=sample.api_key_id,
        http_status=http_status,
        error_code=error_code,
        served_model=served_model,
        upstream_latency_ms=elapsed_ms,
        total_latency_ms=elapsed_ms,
    )
    return event


async def metered_call(
    sample: ShadowSample, planned: PlannedCall, body: dict, *, hold: EvaluationHold
) -> MeteredAnswer | None:
    """One evaluation call, whose worst case the hold reserves: made, settled with what it cost and recorded in the
    ledger. None when the provider gave no usable answer (its failure is recorded, and charged, as the gateway's
    are)."""
    model = planned.model
    started = time.perf_counter()
    try:
        reply = await upstream.chat_completion(model.provider, body)
        usage = await reply_usage(reply, body=body, model=model, prompt_tokens=planned.prompt_tokens)
        event = _ledger_event(
            sample,
            model,
            usage=usage,
            http_status=200,
            error_code="",
            started=started,
            tier=upstream.served_tier(reply.body),
        )
        # What the answer says, for the judgement: the reasoning a model wrote before it is not part of it.
        text = upstream.answer_text(reply.body, reasoning=False)
    except upstream.UpstreamError as error:
        failure = upstream_failure(error)
        # An unusable answer is charged at the tier it names; a call that brought none, at the standard one.
        tier = error.service_tier if isinstance(error, upstream.UpstreamInvalidResponse) else None
        event = _ledger_event(
            sample,
            model,
            usage=await _failure_usage(error, model, body),
            http_status=failure.status_code,
            error_code=failure.code,
            started=started,
            tier=tier,
        )
        logger.warning("shadow evaluation of %s: %s failed (%s)", sample.request_id, model.name, failure.code)
        text = None
    try:
        await database_sync_to_async(evaluation_budget_settle)(
            hold=hold, amount=planned.worst_case_usd, actual=event.cost_usd
        )
    finally:
        await record_usage(event)
    return MeteredAnswer(text=text, cost_usd=event.cost_usd) if text is not None else None


async def _failure_usage(error: upstream.UpstreamError, model: ModelEntry, body: dict) -> Usage:
    """What a failed evaluation call is charged: as a request's failed attempt is (the prompt, and an unusable answer's
    text, as the gateway counts them) when the provider may bill it (it had the request when the wait for the answer
    timed out, or it answered unusably); nothing when it never had the request or refused it."""
    if not error.billable:
        return Usage()

    async def estimate(called: ModelEntry, completion_text: str) -> Usage:
        return await estimated_usage(body, completion_text, called)

    return await billed_failure_usage(error, model, estimate)


def _existing(sample: ShadowSample, lever: Lever) -> ShadowEvaluation | None:
    evaluations = ShadowEvaluation.objects.for_tenant(sample.tenant_id)
    return evaluations.filter(request_id=sample.request_id, lever=lever).first()


def _usable(catalog: ModelCatalog, tenant_id: int, name: str) -> ModelEntry | None:
    """The catalog's model of that name if the tenant may use it now and it is a chat model; else None."""
    model = catalog.models.get(name)
    if model is None or model.kind != ModelKind.CHAT or name not in catalog.access_for(tenant_id).allowed_models:
        return None
    return model


def _settings(tenant_id: int) -> EvaluationSettings | None:
    found = EvaluationSettings.objects.for_tenant(tenant_id).filter(enabled=True).select_related("judge_model")
    return found.first()


@database_sync_to_async
def _unjudged(sample: ShadowSample, lever: Lever, why: str) -> None:
    logger.warning("shadow evaluation of %s (%s) has no verdict: %s", sample.request_id, lever.value, why)
    evaluation_unjudged_count(tenant_id=sample.tenant_id, now=timezone.now())


def _record(
    sample: ShadowSample, lever: Lever, *, reference: ModelEntry, judgement: Judgement, cost_usd: Decimal
) -> ShadowEvaluation:
    try:
        with transaction.atomic():
            return ShadowEvaluation.objects.create(
                tenant_id=sample.tenant_id,
                request_id=sample.request_id,
                lever=lever,
                rule=sample.rule[:128],
                served_model=sample.served_model,
                reference_model=reference.name,
                task_type=sample.task_type,
                method=judgement.method,
                agrees=judgement.agrees,
                verdict=judgement.verdict,
                similarity=judgement.similarity,
                reason_encrypted=ShadowEvaluation.seal_reason(judgement.reason),
                cost_usd=cost_usd,
                created_at=timezone.now(),
            )
    except IntegrityError:
        # Another run of the same sample recorded it first.
        return _existing(sample, lever)


async def _embedding_judgement(
    sample: ShadowSample, judge: EmbeddingJudge, reference: str, *, threshold: float, hold: EvaluationHold
) -> tuple[Judgement | None, Decimal]:
    """The similarity verdict on the reference's answer and the sample's, and what its embedding call cost. No verdict
    when that call failed. A paid call that failed once the provider may bill it (UpstreamError.billable: it timed
    out waiting for the answer, or the answer could not be read) is charged the gateway's count of the texts it sent,
    its row carrying the failure's status and error code; one that never reached the provider, or that it refused
    with an error status, bills nothing and has no row."""
    texts = [reference, sample.answer]
    if not judge.metered:
        return embedding_judgement(await asyncio.to_thread(judge.embedder.embed, texts), threshold=threshold), ZERO_USD
    started = time.perf_counter()
    try:
        metered = await asyncio.to_thread(judge.embedder.embed_metered, texts)
    except Exception as error:
        logger.warning("shadow evaluation of %s: the embedding judge's call failed (%s)", sample.request_id, error)
        if not (isinstance(error, upstream.UpstreamError) and error.billable):
            return None, ZERO_USD
        failure = upstream_failure(error)
        usage = Usage(prompt_tokens=_counted_tokens(texts, model=judge.embedder.model), estimated=True)
        cost = await _embedding_call_metered(
            sample,
            judge,
            judge.embedder.model,
            usage=usage,
            http_status=failure.status_code,
            error_code=failure.code,
            started=started,
            hold=hold,
        )
        return None, cost
    if metered.prompt_tokens is not None:
        usage = Usage(prompt_tokens=metered.prompt_tokens)
    else:
        usage = Usage(prompt_tokens=_counted_tokens(texts, model=metered.model), estimated=True)
    cost = await _embedding_call_metered(
        sample, judge, metered.model, usage=usage, http_status=200, error_code="", started=started, hold=hold
    )
    return embedding_judgement(metered.vectors, threshold=threshold), cost


def _counted_tokens(texts: list[str], *, model: str) -> int:
    return sum(count_text_tokens(text, model=model) for text in texts)


async def _embedding_call_metered(
    sample: ShadowSample,
    judge: EmbeddingJudge,
    served_model: str,
    *,
    usage: Usage,
    http_status: int,
    error_code: str,
    started: float,
    hold: EvaluationHold,
) -> Decimal:
    """The paid embedding call's ledger row, settled against the hold; its cost. Priced at the judge's catalog model,
    or at 0 when the catalog prices none (flagged UNPRICED_MODEL, unless the call's failure flags it)."""
    if judge.model is not None:
        event = _ledger_event(
            sample, judge.model, usage=usage, http_status=http_status, error_code=error_code, started=started
        )
    else:
        event = _unpriced_event(
            sample,
            served_model,
            usage=usage,
            http_status=http_status,
            error_code=error_code or UNPRICED_MODEL,
            started=started,
        )
    try:
        await database_sync_to_async(evaluation_budget_settle)(
            hold=hold, amount=judge.worst_case_usd, actual=event.cost_usd
        )
    finally:
        await record_usage(event)
    return event.cost_usd


def _embedding_judge(
    embedder, catalog: ModelCatalog, sample: ShadowSample, *, reference_call: PlannedCall, reference_body: dict
) -> EmbeddingJudge:
    """The embedding judge before the reference answered. A paid embedder's call is reserved at its two texts' most
    tokens: the sample's answer as counted, and the most the reference's answer may have (its output bound), with
    the prompt margin of the embeddings model's provider."""
    judge = EmbeddingJudge(embedder)
    model = cache_embeddings_model(catalog, embedder.model) if judge.metered else None
    if model is None:
        return judge
    reference = reference_call.model
    answer_tokens = OutputBound.of(reference_body, model=reference.upstream_name).per_choice(
        reference, fallback=django_settings.LLMOPS_RESERVATION_MAX_TOKENS
    )
    tokens = reserved_prompt_tokens(model, count_text_tokens(sample.answer, model=embedder.model) + answer_tokens)
    cost = usage_cost(prices=model.prices, prompt_tokens=tokens, cached_tokens=0, completion_tokens=0)
    return EmbeddingJudge(embedder, model, cost)


async def shadow_evaluation_run(*, sample: ShadowSample, lever: Lever) -> ShadowEvaluation | None:
    """Evaluate one sampled lever of a request; the ShadowEvaluation recorded (or recorded before, by an earlier run
    of the same sample), None when the evaluation reached no verdict or another run has it in hand."""
    existing = await database_sync_to_async(_existing)(sample, lever)
    if existing is not None:
        return existing
    settings = await database_sync_to_async(_settings)(sample.tenant_id)
    if settings is None:
        return None
    catalog = (await config_snapshot.for_tenant(sample.tenant_id)).catalog
    reference = _usable(catalog, sample.tenant_id, sample.levers[lever.value])
    judge = _usable(catalog, sample.tenant_id, settings.judge_model.name) if settings.judge_model is not None else None
    method = judge_method(settings, sample.task_type)
    if reference is None or (method == JudgeMethod.LLM and judge is None):
        # Access can be revoked between the sample and its evaluation: nothing is called then.
        await _unjudged(sample, lever, "its reference or judge model is not a chat model the tenant may use now")
        return None
    embedder = await asyncio.to_thread(configured_embedder) if method == JudgeMethod.EMBEDDING else None
    if method == JudgeMethod.EMBEDDING and embedder is None:
        # Checked before any call is paid for.
        await _unjudged(sample, lever, "the embedder (LLMOPS_CACHE_EMBEDDER) could not load in this worker")
        return None
    body = reference_body(sample, lever, reference)
    planned = [await _planned_reference(reference, body)]
    if method == JudgeMethod.LLM:
        planned.append(await _planned_judge(judge, sample, reference_call=planned[0], reference_body=body))
    amount = sum((call.worst_case_usd for call in planned), ZERO_USD)
    embedding = None
    if embedder is not None:
        embedding = _embedding_judge(embedder, catalog, sample, reference_call=planned[0], reference_body=body)
        amount += embedding.worst_case_usd
    # An embedding call's time is within HOLD_SLACK_SECONDS (HttpEmbedder's timeout is 10 s).
    bound = hold_seconds([call.model for call in planned])
    try:
        hold = await database_sync_to_async(evaluation_budget_reserve)(
            tenant_id=sample.tenant_id,
            request_id=sample.request_id,
            lever=lever.value,
            amount=amount,
            now=timezone.now(),
            hold_seconds=bound,
        )
    except EvaluationClaimed:
        logger.info("shadow evaluation of %s (%s): another run has it", sample.request_id, lever.value)
        return await database_sync_to_async(_existing)(sample, lever)
    if hold is None:
        return None
    try:
        judged = _judged(
            sample, lever, settings=settings, method=method, body=body, planned=planned, embedding=embedding, hold=hold
        )
        return await asyncio.wait_for(judged, timeout=bound)
    except TimeoutError:
        await _unjudged(sample, lever, f"it ran past its bound of {bound:g} s")
        return None
    finally:
        await database_sync_to_async(evaluation_hold_end)(hold=hold)


async def _planned_reference(reference: ModelEntry, body: dict) -> PlannedCall:
    prompt_tokens = await count_prompt_tokens_async(body, model=reference.upstream_name)
    return PlannedCall(reference, prompt_tokens, worst_case(reference, body, prompt_tokens=prompt_tokens))


def _judge_body(judge: ModelEntry, sample: ShadowSample, *, reference: str) -> dict:
    messages = sample.uncompressed_messages or sample.body["messages"]
    return {
        "model": judge.upstream_name,
        "messages": judge_messages(messages, reference=reference, candidate=sample.answer),
        "max_tokens": JUDGE_MAX_TOKENS,
        "temperature": 0,
    }


async def _planned_judge(
    judge: ModelEntry, sample: ShadowSample, *, reference_call: PlannedCall, reference_body: dict
) -> PlannedCall:
    """The judge's call before the reference answered: its prompt without the reference's answer, plus the most
    tokens that answer may have (the reference's output bound; the judge quotes at most JUDGE_ANSWER_CHARS of it)."""
    without_answer = _judge_body(judge, sample, reference="")
    counted = await count_chat_tokens_async(without_answer["messages"], model=judge.upstream_name)
    reference = reference_call.model
    answer_tokens = OutputBound.of(reference_body, model=reference.upstream_name).per_choice(
        reference, fallback=django_settings.LLMOPS_RESERVATION_MAX_TOKENS
    )
    prompt_tokens = counted + answer_tokens
    return PlannedCall(judge, prompt_tokens, worst_case(judge, without_answer, prompt_tokens=prompt_tokens))


async def _judged(
    sample: ShadowSample,
    lever: Lever,
    *,
    settings: EvaluationSettings,
    method: JudgeMethod,
    body: dict,
    planned: list[PlannedCall],
    embedding: EmbeddingJudge | None,
    hold: EvaluationHold,
) -> ShadowEvaluation | None:
    reference = planned[0].model
    answer = await metered_call(sample, planned[0], body, hold=hold)
    if answer is None:
        await _unjudged(sample, lever, f"the reference call to {reference.name} failed")
        return None
    cost = answer.cost_usd
    if method == JudgeMethod.EXACT:
        judgement = exact_judgement(answer.text, sample.answer)
    elif method == JudgeMethod.LLM:
        judge = planned[1]
        verdict = await metered_call(sample, judge, _judge_body(judge.model, sample, reference=answer.text), hold=hold)
        judgement = llm_judgement(verdict.text) if verdict is not None else None
        cost += verdict.cost_usd if verdict is not None else ZERO_USD
    else:
        threshold = float(settings.similarity_threshold)
        judgement, embedding_cost = await _embedding_judgement(
            sample, embedding, answer.text, threshold=threshold, hold=hold
        )
        cost += embedding_cost
    if judgement is None:
        await _unjudged(sample, lever, f"no readable verdict ({method.label})")
        return None
    return await database_sync_to_async(_record)(sample, lever, reference=reference, judgement=judgement, cost_usd=cost)
