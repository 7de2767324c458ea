"""Synthetic shadow evaluations for the demo's synthetic history (billing.finance.rollups_seed), so the dashboard
shows each lever's agreement next to its savings after `make demo`.

A share of the requests each lever made cheaper is evaluated (DEMO_SAMPLE_RATES), as the runner would sample them:
chat requests (never the batch endpoint's lines, which the runner never sees) served by the small model (routing,
cache hits included), answered from a semantic neighbour (semantic cache), or compressed. Each evaluation is a
ShadowEvaluation row and a ledger row of kind `evaluation` for its reference call, priced at the reference model's
prices on the tokens the reference is sent: the compressed prompt for routing and the semantic cache (their reference
gets the body the request was sent with), the uncompressed one for compression. The months' EvaluationSpend rows say
what those calls cost, as the runner's settlements would, so the evaluation budget shows the seeded spend.

Agreement is spread per lever at the rates below (routing by task type: summaries agree least, classification most):
each group's disagreements come at a steady pace from a random start, so a group's share of them is its rate to
within one evaluation. Independent draws would leave a small group (a few dozen summaries) agreeing every time on one
day in ten, and the demo's what-if would then promise nothing from moving them to the large model. The draws come
from a random stream of their own, so the rest of the history is what it was and a rerun writes the same rows.
"""

import random
from dataclasses import dataclass
from datetime import UTC, timedelta
from decimal import Decimal

from django.db.models import Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing.ledger.costs import BATCH_ENDPOINT, Usage
from billing.models import (
    CacheStatus,
    EvaluationSettings,
    EvaluationSpend,
    JudgeMethod,
    Lever,
    ShadowEvaluation,
    UsageKind,
    UsageRecord,
)
from routing.catalog import ModelPrices
from routing.models import Model
from tenants.models import Tenant

# The demo's evaluation settings sample each lever at these rates, and its history was sampled alike: above the 2%
# default, so three weeks of a small tenant give intervals worth reading; routing least, its reference being the
# dearest call.
DEMO_SAMPLE_RATES = {
    Lever.ROUTING: Decimal("0.05"),
    Lever.SEMANTIC_CACHE: Decimal("0.25"),
    Lever.COMPRESSION: Decimal("0.10"),
    Lever.BUDGET_DOWNGRADE: Decimal("0.02"),
}
DEMO_EVALUATION_BUDGET_USD = Decimal("20")
# Agreement drawn per lever (routing: per task type, the others' rate for any other).
AGREEMENT = {
    Lever.SEMANTIC_CACHE: 0.98,
    Lever.COMPRESSION: 0.93,
}
ROUTING_AGREEMENT = {"classification": 0.985, "extraction": 0.97, "summarization": 0.92}
ROUTING_AGREEMENT_OTHERWISE = 0.96
EXACT_TASK_TYPES = ("classification", "extraction")
EVALUATION_ROUTE = "shadow-evaluation"


@dataclass(frozen=True)
class _Sample:
    record: UsageRecord
    lever: str
    reference: Model


def _levers(record: UsageRecord, *, small: Model, premium: Model, served: Model) -> list[tuple[str, Model]]:
    """The levers that made an answered request cheaper, each with its reference model."""
    if record.http_status != 200 or record.endpoint == BATCH_ENDPOINT:
        return []
    levers = []
    if served == small and small != premium:
        levers.append((Lever.ROUTING, premium))
    if record.cache_status == CacheStatus.HIT_SEMANTIC:
        levers.append((Lever.SEMANTIC_CACHE, served))
    before, after = record.prompt_tokens_before_compression, record.prompt_tokens_after_compression
    if before and after and after < before:
        levers.append((Lever.COMPRESSION, served))
    return levers


def _reference_prompt_tokens(sample: _Sample) -> int:
    """What the reference call is sent: the uncompressed prompt for compression, the prompt as sent otherwise."""
    record = sample.record
    if sample.lever == Lever.COMPRESSION:
        counted = record.prompt_tokens_before_compression
    else:
        counted = record.prompt_tokens_after_compression
    return counted or record.prompt_tokens or 200


def _agreement(sample: _Sample) -> tuple[tuple[str, str], float]:
    """The sample's group and the rate its answers agree at."""
    if sample.lever == Lever.ROUTING:
        task_type = sample.record.task_type
        return (sample.lever, task_type), ROUTING_AGREEMENT.get(task_type, ROUTING_AGREEMENT_OTHERWISE)
    return (sample.lever, ""), AGREEMENT[sample.lever]


class _Agreements:
    """Whether each next evaluation of a group agrees: a disagreement whenever the group's owed share of them (one
    minus its rate per evaluation, from a random start below one) reaches one."""

    def __init__(self, randomness: random.Random):
        self.randomness = randomness
        self.owed: dict[tuple[str, str], float] = {}

    def next(self, sample: _Sample) -> bool:
        group, rate = _agreement(sample)
        owed = self.owed.get(group)
        owed = (self.randomness.random() if owed is None else owed) + 1 - rate
        agrees = owed < 1
        self.owed[group] = owed if agrees else owed - 1
        return agrees


def seed_demo_evaluations(
    *,
    tenant: Tenant,
    records: list[UsageRecord],
    small: Model,
    premium: Model,
    prices: dict[str, ModelPrices],
    seed: int,
) -> list[UsageRecord]:
    """Write the shadow evaluations of a sample of `records` (synthetic requests, saved or not); returns their
    reference calls' ledger rows, for the caller to insert with the history. `prices`: each model's, by name."""
    randomness = random.Random(seed * 7919 + 18)
    now = timezone.now()
    models = {small.name: small, premium.name: premium}
    samples = [
        _Sample(record, lever, reference)
        for record in records
        for lever, reference in _levers(record, small=small, premium=premium, served=models[record.served_model])
        if randomness.random() < DEMO_SAMPLE_RATES[lever]
    ]
    evaluations, calls, agreements = [], [], _Agreements(randomness)
    for sample in samples:
        record, reference = sample.record, sample.reference
        usage = Usage(
            prompt_tokens=_reference_prompt_tokens(sample),
            completion_tokens=record.completion_tokens or int(randomness.lognormvariate(5.0, 0.6)),
        )
        cost = usage.cost(prices[reference.name])
        agrees = agreements.next(sample)
        exact = record.task_type in EXACT_TASK_TYPES
        moment = min(record.created_at + timedelta(seconds=randomness.randrange(5, 90)), now)
        evaluations.append(
            ShadowEvaluation(
                tenant=tenant,
                request_id=record.request_id,
                lever=sample.lever,
                rule=record.route,
                served_model=record.served_model,
                reference_model=reference.name,
                task_type=record.task_type,
                method=JudgeMethod.EXACT if exact else JudgeMethod.EMBEDDING,
                agrees=agrees,
                similarity=None if exact else round(randomness.uniform(*((0.86, 0.99) if agrees else (0.5, 0.84))), 4),
                cost_usd=cost,
                created_at=moment,
            )
        )
        calls.append(
            UsageRecord(
                request_id=f"{record.request_id}_{sample.lever}",
                kind=UsageKind.EVALUATION,
                parent_request_id=record.request_id,
                tenant=tenant,
                team_id=record.team_id,
                api_key_id=record.api_key_id,
                customer=record.customer,
                requested_model=reference.name,
                served_model=reference.name,
                price_version_id=reference.price_version_id,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=cost,
                cache_status=CacheStatus.BYPASS,
                route=EVALUATION_ROUTE,
                http_status=200,
                attempts=1,
                total_latency_ms=int(randomness.lognormvariate(6.6, 0.5)),
                task_type=record.task_type,
                created_at=moment,
            )
        )
    ShadowEvaluation.objects.bulk_create(evaluations, batch_size=2000, ignore_conflicts=True)
    return calls


def demo_evaluation_spend_set(*, tenant: Tenant) -> None:
    """Each month's EvaluationSpend says what the tenant's evaluation calls in the ledger cost that month (UTC), as the
    runner's settlements would have: set from the ledger, so a rerun sets the same figures."""
    months = (
        UsageRecord.objects.for_tenant(tenant)
        .filter(kind=UsageKind.EVALUATION)
        .annotate(month=TruncMonth("created_at", tzinfo=UTC))
        .values("month")
        .annotate(spent=Sum("cost_usd"))
        .order_by("month")
    )
    for row in months:
        EvaluationSpend.objects.for_tenant(tenant).update_or_create(
            tenant=tenant, month=row["month"].date(), defaults={"spent_usd": row["spent"]}
        )


def demo_evaluation_settings(*, tenant: Tenant) -> EvaluationSettings:
    """Shadow evaluation on for the demo tenant, at the rate its history was sampled, with a monthly budget."""
    rates = {f"{lever}_sample_rate": rate for lever, rate in DEMO_SAMPLE_RATES.items()}
    settings, _ = EvaluationSettings.objects.for_tenant(tenant).update_or_create(
        tenant=tenant, defaults={"enabled": True, "monthly_budget_usd": DEMO_EVALUATION_BUDGET_USD, **rates}
    )
    return settings
