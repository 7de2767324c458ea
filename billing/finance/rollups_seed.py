"""Synthetic usage for the demo tenant, so the dashboard has weeks of history on first run.

Each row is what the gateway would have written for the request, savings included, priced with billing.ledger.costs:

- requests name the `auto` alias and are routed as the default policy does (routing.services, with its rule names as
  routes): short classification and summaries to the tenant's cheapest allowed model, enterprise-tier ones to its
  dearest (the premium model), the others to one or the other by their difficulty score. One served by the cheap
  model saved what the premium model would have charged for the same tokens, minus what the cheap one charged.
- some long prompts were compressed: the removed tokens are saved at the served model's input price.
- cache hits (exact and semantic) replay an earlier answered request of the same model: cost 0, no tokens, and a
  saving equal to what that request cost.
- some lines went to the provider's batch endpoint: charged the model's `batch_price_multiplier` of the list price,
  the rest saved.
- some prompts were partly read from the provider's prompt cache (OpenAI's automatic caching): those tokens are
  saved at the input price less the cached price (the `provider_cache` lever).
- a few upstream failures: no tokens, no cost, no saving.
- a share of the requests each lever made cheaper were shadow-evaluated (billing.quality.seed): their evaluations,
  and the reference calls' ledger rows of kind `evaluation`.
- every row keeps the routing features the gateway records (the prompt count, task type, user tier, tools, images and
  the difficulty score where the alias scored it), consistent with its route, so a what-if replay of a draft policy
  (billing.finance.whatif) can route the history again: short tasks are classification or summarization, enterprise
  requests have the enterprise tier, and a scored request's score is on its model's side of the threshold.
"""

import math
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from billing.finance.rollups import usage_rollups_rebuild
from billing.ledger.costs import (
    BATCH_ENDPOINT,
    Usage,
    batch_price,
    compression_saving,
    provider_cache_saving,
    routing_saving,
)
from billing.ledger.selectors import tenant_zone
from billing.models import CacheStatus, UsageRecord
from billing.quality.seed import demo_evaluation_spend_set, seed_demo_evaluations
from routing.catalog import ModelPrices
from routing.models import Model, ModelKind, TenantModelAccess
from routing.policy.engine import SCORED_ROUTE
from routing.policy.scoring import LENGTH_POINTS_MAX, TOKENS_PER_LENGTH_POINT
from routing.services import BY_DIFFICULTY_RULE, ENTERPRISE_RULE, SHORT_TASK_PROMPT_TOKENS_MAX, SHORT_TASKS_RULE
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_create

WEEKDAY_REQUESTS = 420
WEEKEND_FACTOR = 0.35
EXACT_HIT_SHARE = 0.12
SEMANTIC_HIT_SHARE = 0.06
ENTERPRISE_SHARE = 0.10
SHORT_TASK_SHARE = 0.20
# Of the requests the difficulty score routes, those scored at or over the threshold.
SCORED_LARGE_SHARE = 0.20
FAILURE_SHARE = 0.02
BATCH_SHARE = 0.08
# Prompts longer than this are compressed (most of the time) to between these shares of their length.
COMPRESSION_ABOVE_TOKENS = 1200
COMPRESSION_KEEPS = (0.45, 0.8)
# How many recent answers per model a cache hit may replay (roughly an hour's traffic).
CACHE_WINDOW = 40
SHORT_TASK_TYPES = ("classification", "summarization")
OTHER_TASK_TYPES = ("chat", "extraction", "drafting", "")
OTHER_USER_TIERS = ("free", "pro", "")
# The default template's auto_threshold: a scored request at or over it went to the large model.
SCORE_THRESHOLD = 50


def _hour_weight(hour: int) -> float:
    """Busy office hours, quiet nights."""
    return 0.15 + math.exp(-((hour - 14) ** 2) / 18)


def _keys_by_team(tenant: Tenant) -> list[ApiKey]:
    keys = []
    for team in tenant.teams.filter(is_active=True):
        key = ApiKey.objects.for_tenant(tenant).filter(team=team).first()
        keys.append(key or api_key_create(team=team, name=f"{team.slug} synthetic usage")[0])
    return keys


def _prices(model: Model) -> ModelPrices:
    """Of a model read ``with_prices_in_force()``."""
    return ModelPrices(
        model.input_price_per_million,
        model.cached_input_price_per_million,
        model.output_price_per_million,
        model.cache_write_price_per_million,
    )


def seed_demo_usage(*, tenant: Tenant, days: int = 21, seed: int = 7) -> int:
    """Write `days` days of realistic ledger rows for the tenant's teams and allowed models, then build the rollups.

    Deterministic for a seed and a day: a rerun the same day writes the same request ids, which the ledger
    ignores. Returns the number of rows offered to the ledger.
    """
    access = TenantModelAccess.objects.for_tenant(tenant).prefetch_related("allowed_models").get()
    # Cheapest and dearest, ordered as the default routing policy picks its small and large model.
    models = sorted(
        access.allowed_models.filter(kind=ModelKind.CHAT).with_prices_in_force().filter(price_version_id__isnull=False),
        key=lambda model: (model.input_price_per_million + model.output_price_per_million, model.name),
    )
    keys = _keys_by_team(tenant)
    if not models or not keys:
        raise ValueError(f"tenant '{tenant.slug}' needs at least one allowed model and one team")
    history = _SyntheticHistory(
        tenant=tenant,
        small=models[0],
        premium=models[-1],
        randomness=random.Random(seed),
        # The routing features draw from a stream of their own, so the rest of the history is what it was before.
        hints=random.Random(-seed),
    )
    zone = tenant_zone(tenant=tenant)
    today = timezone.now().astimezone(zone).date()
    first_day = today - timedelta(days=days - 1)
    now = timezone.now()
    records = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        for moment in history.moments(day, zone=zone):
            record = history.record(key=history.randomness.choice(keys), moment=moment)
            if record.created_at <= now:
                records.append(record)
    evaluation_calls = seed_demo_evaluations(
        tenant=tenant,
        records=records,
        small=history.small,
        premium=history.premium,
        prices={model.name: _prices(model) for model in (history.small, history.premium)},
        seed=seed,
    )
    UsageRecord.objects.bulk_create(records + evaluation_calls, batch_size=2000, ignore_conflicts=True)
    demo_evaluation_spend_set(tenant=tenant)
    usage_rollups_rebuild(tenant=tenant, first=first_day, last=today)
    return len(records)


class _SyntheticHistory:
    def __init__(
        self, *, tenant: Tenant, small: Model, premium: Model, randomness: random.Random, hints: random.Random
    ):
        self.tenant = tenant
        self.small = small
        self.premium = premium
        self.randomness = randomness
        self.hints = hints
        self.answers: dict[str, list[Decimal]] = defaultdict(list)

    def moments(self, day: date, *, zone) -> list[datetime]:
        volume = WEEKDAY_REQUESTS * (WEEKEND_FACTOR if day.weekday() >= 5 else 1.0) * self.randomness.uniform(0.8, 1.2)
        weights = [_hour_weight(hour) for hour in range(24)]
        start = datetime(day.year, day.month, day.day, tzinfo=zone)
        moments = [
            start + timedelta(hours=hour, seconds=self.randomness.randrange(3600))
            for hour, weight in enumerate(weights)
            for _ in range(int(volume * weight / sum(weights)))
        ]
        return sorted(moments)

    def _route(self) -> tuple[Model, str]:
        """The served model and the route the default policy records for an `auto` request."""
        roll = self.randomness.random()
        if roll < ENTERPRISE_SHARE:
            return self.premium, ENTERPRISE_RULE
        if roll < ENTERPRISE_SHARE + SHORT_TASK_SHARE:
            return self.small, SHORT_TASKS_RULE
        model = self.premium if self.randomness.random() < SCORED_LARGE_SHARE else self.small
        return model, f"{BY_DIFFICULTY_RULE}+{SCORED_ROUTE}"

    def record(self, *, key: ApiKey, moment: datetime) -> UsageRecord:
        model, route = self._route()
        record = self._outcome(key=key, moment=moment, model=model, route=route)
        self._routing_features(record)
        return record

    def _routing_features(self, record: UsageRecord) -> None:
        """What routing read of the request, as the gateway records it: consistent with the rule its route names."""
        hints = self.hints
        if record.prompt_tokens_before_compression is None:
            # A cache hit or a failure used no tokens, but routing counted its prompt all the same.
            counted = int(
                hints.lognormvariate(5.3, 0.5) if record.route == SHORT_TASKS_RULE else hints.lognormvariate(6.3, 0.7)
            )
            if record.route == SHORT_TASKS_RULE:
                counted = min(counted, SHORT_TASK_PROMPT_TOKENS_MAX)
            record.prompt_tokens_before_compression = record.prompt_tokens_after_compression = counted
        record.has_tools = record.has_images = False
        if record.route == SHORT_TASKS_RULE:
            record.task_type, record.user_tier = hints.choice(SHORT_TASK_TYPES), hints.choice(OTHER_USER_TIERS)
            return
        record.task_type = hints.choice(OTHER_TASK_TYPES)
        if record.route == ENTERPRISE_RULE:
            record.user_tier = "enterprise"
            return
        record.user_tier = hints.choice(OTHER_USER_TIERS)
        length = min(LENGTH_POINTS_MAX, record.prompt_tokens_before_compression // TOKENS_PER_LENGTH_POINT)
        record.difficulty_score = (
            hints.randint(max(length, SCORE_THRESHOLD), 100)
            if record.routed_to_large
            else hints.randint(length, SCORE_THRESHOLD - 1)
        )

    def _outcome(self, *, key: ApiKey, moment: datetime, model: Model, route: str) -> UsageRecord:
        randomness = self.randomness
        record = UsageRecord(
            request_id=f"seed_{self.tenant.pk}_{moment.astimezone(UTC):%Y%m%d%H%M%S}_{randomness.getrandbits(40):010x}",
            tenant=self.tenant,
            team_id=key.team_id,
            api_key=key,
            requested_model="auto",
            served_model=model.name,
            # Every row is priced at the served model's prices in force now, as the gateway records its version.
            price_version_id=model.price_version_id,
            route=route,
            routed_to_large=model == self.premium and model != self.small,
            is_stream=randomness.random() < 0.4,
            http_status=200,
            created_at=moment,
        )
        roll = randomness.random()
        answers = self.answers[model.name]
        if roll < EXACT_HIT_SHARE + SEMANTIC_HIT_SHARE and answers:
            record.cache_status = CacheStatus.HIT_EXACT if roll < EXACT_HIT_SHARE else CacheStatus.HIT_SEMANTIC
            record.saved_cache_usd = randomness.choice(answers[-CACHE_WINDOW:])
            record.total_latency_ms = 5 + randomness.randrange(15)
            record.attempts = 0
            return record
        record.cache_status = CacheStatus.MISS
        record.attempts = 1
        if randomness.random() < FAILURE_SHARE:
            record.http_status, record.error_code = 502, "upstream_error"
            record.total_latency_ms = int(randomness.lognormvariate(7.5, 0.4))
            return record
        self._answer(record, model)
        return record

    def _answer(self, record: UsageRecord, model: Model) -> None:
        """Tokens, latency, cost and the routing, compression, batch and provider-cache savings of a request answered
        upstream."""
        randomness = self.randomness
        prices = _prices(model)
        if record.route == SHORT_TASKS_RULE:
            prompt = min(int(randomness.lognormvariate(5.3, 0.5)), SHORT_TASK_PROMPT_TOKENS_MAX)
        else:
            prompt = int(randomness.lognormvariate(6.3, 0.7))
        record.prompt_tokens_before_compression = record.prompt_tokens_after_compression = prompt
        if prompt > COMPRESSION_ABOVE_TOKENS and randomness.random() < 0.7:
            record.prompt_tokens_before_compression = prompt
            prompt = int(prompt * randomness.uniform(*COMPRESSION_KEEPS))
            record.prompt_tokens_after_compression = prompt
            record.saved_compression_usd = compression_saving(
                prices, tokens_before=record.prompt_tokens_before_compression, tokens_after=prompt
            )
        record.prompt_tokens = prompt
        record.cached_tokens = int(prompt * randomness.uniform(0, 0.5)) if randomness.random() < 0.3 else 0
        record.completion_tokens = int(randomness.lognormvariate(5.0, 0.6))
        usage = Usage(
            prompt_tokens=record.prompt_tokens,
            cached_tokens=record.cached_tokens,
            completion_tokens=record.completion_tokens,
        )
        list_cost = usage.cost(prices)
        record.saved_provider_cache_usd = provider_cache_saving(usage, cost=list_cost, prices=prices)
        if model != self.premium:
            record.saved_routing_usd = routing_saving(usage, served=prices, baseline=_prices(self.premium))
        record.cost_usd = list_cost
        is_large = model == self.premium
        record.total_latency_ms = int(
            randomness.lognormvariate(6.6 if is_large else 6.0, 0.5) + record.completion_tokens * (8 if is_large else 3)
        )
        record.upstream_latency_ms = max(record.total_latency_ms - 8, 1)
        if not record.is_stream and randomness.random() < BATCH_SHARE:
            record.endpoint = BATCH_ENDPOINT
            record.tags = [f"batch:seed-{record.created_at:%Y%m%d}"]
            record.cost_usd, record.saved_batch_usd = batch_price(list_cost, multiplier=model.batch_price_multiplier)
            return
        # Only synchronous answers are stored in the response cache.
        self.answers[model.name].append(list_cost)
