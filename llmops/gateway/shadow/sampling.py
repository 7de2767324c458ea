"""Which of a request's answers are shadow-evaluated, decided on the request path and handed to Celery.

A request answered 200 (streamed or not, by the upstream or a semantic cache hit) that a lever made cheaper may be
sampled, one draw per lever (its rate in the tenant's snapshot: no query). Each lever's reference is the answer it
would have had without the lever:

* routing: served by a cheaper model than its routing baseline (the model it named, or its alias's large model; only
  one the tenant may use, a chat model that takes the request's tools and images) → the baseline, with the same body;
* semantic_cache: answered by a semantic cache hit → a fresh call to the served model;
* compression: the prompt was compressed → the served model with the prompt before compression;
* budget_downgrade: a budget sent it to a cheaper route → the model the route chose before.

A downgraded request is evaluated for the downgrade only: its answer is not the routed model's. Nor is an answer a
fallback gave after routing's choice failed routing's. A semantic cache hit is evaluated for the semantic cache only:
its answer was written for another prompt, so it tells nothing of routing or compression. An exact cache hit is not
sampled: the miss that stored its answer was a candidate already, and each repeat would count that verdict again.
Requests asking for several choices (``n`` > 1) and answers without text (tool calls only) are not sampled.

A sampled request is sealed and enqueued from a thread of its own, so the event loop never waits on the broker or
on encrypting a large prompt, to the Celery queue ``shadow`` (a worker must consume it: ``-Q celery,shadow``), with
an expiry (LLMOPS_SHADOW_TASK_EXPIRES_SECONDS) past which the worker drops it. Dropped on the request path instead,
counted and logged once in a while (SkippedSamples): a sample larger than LLMOPS_SHADOW_SAMPLE_MAX_BYTES sealed (or
known to be from the request's size before sealing), and one that finds MAX_PENDING samples waiting for the broker.
A tenant whose month of evaluation budget is spent is not sampled until the month ends (EvaluationRates.paused).
"""

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from django.conf import settings
from django.db import connections

from billing.models import CacheStatus, Lever
from llmops.gateway.call import GatewayCall
from llmops.gateway.chat.planning import model_lacks
from llmops.gateway.shadow.samples import ShadowSample, sample_seal
from llmops.gateway.shadow.tasks import SHADOW_QUEUE, shadow_evaluate_task
from llmops.metrics import SHADOW_SAMPLES_SKIPPED
from routing.catalog import ModelEntry
from routing.providers.base import message_text

logger = logging.getLogger(__name__)

BUDGET_DOWNGRADE_SUFFIX = "+budget-downgrade"
MAX_PENDING = 1000
SKIP_LOG_SECONDS = 60.0
# Why a sample was dropped on the request path (the metric's label).
TOO_LARGE = "too_large"
BACKLOG = "backlog"

_enqueue_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow-samples")
_pending: set[Future] = set()
_lock = threading.Lock()


def _routed_cheaper(call: GatewayCall, baseline: ModelEntry | None) -> bool:
    """Whether routing's own choice answered the request (not a fallback after it failed) and cost less than the
    baseline would have, at the request's usage."""
    routed, usage = call.routed, call.settled_usage
    if baseline is None or routed is None or usage is None:
        return False
    if call.served.name != routed.name or routed.name == baseline.name:
        return False
    return usage.cost(routed.prices) < usage.cost(baseline.prices)


def _usable_baseline(call: GatewayCall) -> ModelEntry | None:
    """The routing baseline, if evaluation may call it for this request: planning only sets one the tenant may use
    (routing_baseline), and it must be a chat model that takes the request's tools and images."""
    baseline = call.routing_baseline
    if baseline is None or model_lacks(baseline, call) is not None:
        return None
    return baseline


def levers_of(call: GatewayCall) -> list[tuple[Lever, ModelEntry]]:
    """The levers that made this answered request cheaper, each with the model whose answer is its reference."""
    served = call.served
    if served is None or call.cache_status == CacheStatus.HIT_EXACT:
        return []
    if call.cache_status == CacheStatus.HIT_SEMANTIC:
        return [(Lever.SEMANTIC_CACHE, served)]
    levers = []
    if call.downgraded_from is not None:
        levers.append((Lever.BUDGET_DOWNGRADE, call.downgraded_from))
    elif _routed_cheaper(call, baseline := _usable_baseline(call)):
        levers.append((Lever.ROUTING, baseline))
    before, after = call.prompt_tokens_before_compression, call.prompt_tokens_after_compression
    if before is not None and after is not None and after < before:
        levers.append((Lever.COMPRESSION, served))
    return levers


def _answer_text(answer: dict | str | None) -> str:
    if isinstance(answer, str):
        return answer
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return ""
    return message_text((choices[0].get("message") or {}).get("content"))


def shadow_draw(call: GatewayCall) -> dict[str, str]:
    """The levers sampled for this request, one draw each at the tenant's rate: lever → its reference model's name.
    None while the tenant's month of evaluation budget is spent."""
    rates = call.evaluation
    if rates is None or rates.paused():
        return {}
    return {lever.value: reference.name for lever, reference in levers_of(call) if random.random() < rates.of(lever)}


def shadow_offer(call: GatewayCall, *, body: dict, answer: dict | str | None) -> None:
    """Draw the request's levers against the tenant's rates and hand the sampled ones to the evaluation worker.
    ``body`` is the chat body as sent upstream; ``answer`` the chat.completion (or a stream's assembled text).

    Called once the request is recorded and billed: nothing here may turn its answer into an error."""
    try:
        _offer(call, body=body, answer=answer)
    except Exception:
        logger.exception("shadow evaluation: %s not sampled", call.request_id)


def _offer(call: GatewayCall, *, body: dict, answer: dict | str | None) -> None:
    if (body.get("n") or 1) > 1:
        return
    sampled = shadow_draw(call)
    if not sampled:
        return
    text = _answer_text(answer)
    if not text:
        return
    if call.request_bytes + len(text) > settings.LLMOPS_SHADOW_SAMPLE_MAX_BYTES:
        # Known too large before sealing (the sample holds the request and the answer): nothing held for it.
        skipped.note(TOO_LARGE)
        return
    principal = call.principal
    sample = ShadowSample(
        request_id=call.request_id,
        tenant_id=principal.tenant_id,
        team_id=principal.team_id,
        api_key_id=principal.key_id,
        customer=call.customer,
        tags=list(call.tags),
        endpoint=call.endpoint,
        served_model=call.served.name,
        rule=call.route.removesuffix(BUDGET_DOWNGRADE_SUFFIX),
        task_type=call.task_type,
        levers=sampled,
        body=body,
        uncompressed_messages=(call.request_body or {}).get("messages") if Lever.COMPRESSION in sampled else None,
        answer=text,
    )
    shadow_sample_enqueue(sample)


def shadow_sample_enqueue(sample: ShadowSample) -> None:
    with _lock:
        full = len(_pending) >= MAX_PENDING
        if not full:
            future = _enqueue_executor.submit(_send, sample)
            _pending.add(future)
    if full:
        skipped.note(BACKLOG)
        return
    future.add_done_callback(_settled)


def _settled(future: Future) -> None:
    with _lock:
        _pending.discard(future)


def shadow_samples_wait(timeout: float = 10.0) -> None:
    """Wait for samples being handed over, e.g. before a process exits (and in tests)."""
    with _lock:
        pending = list(_pending)
    wait(pending, timeout=timeout)


def _send(sample: ShadowSample) -> None:
    try:
        sealed = sample_seal(sample)
        if len(sealed) > settings.LLMOPS_SHADOW_SAMPLE_MAX_BYTES:
            skipped.note(TOO_LARGE)
            return
        shadow_evaluate_task.apply_async(
            (sealed,), queue=SHADOW_QUEUE, expires=settings.LLMOPS_SHADOW_TASK_EXPIRES_SECONDS
        )
    except Exception:
        logger.exception("shadow evaluation: could not enqueue %s", sample.request_id)
    finally:
        # A thread seldom used: hold no database connection between samples (an eager task uses one).
        connections.close_all()


class SkippedSamples:
    """Samples the request path dropped instead of handing them over, by reason: counted in the
    llmops_shadow_samples_skipped metric, and logged at most once a SKIP_LOG_SECONDS with the counts since the last
    log, not once per request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._logged_at: float | None = None

    def note(self, reason: str) -> None:
        SHADOW_SAMPLES_SKIPPED.labels(reason).inc()
        now = self._clock()
        with self._lock:
            self._counts[reason] += 1
            if self._logged_at is not None and now - self._logged_at < SKIP_LOG_SECONDS:
                return
            counts, self._counts, self._logged_at = dict(self._counts), Counter(), now
        logger.warning("shadow evaluation: samples dropped since the last report: %s", counts)


skipped = SkippedSamples()
