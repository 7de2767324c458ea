"""Synthetic usage for the demo tenant, so the dashboard has weeks of history on first run."""

import math
import random
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from billing.costs import usage_cost
from billing.models import CacheStatus, UsageRecord
from billing.rollups import usage_rollups_rebuild
from billing.selectors import tenant_zone
from routing.catalog import ModelPrices
from routing.models import TenantModelAccess
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_create

WEEKDAY_REQUESTS = 420
WEEKEND_FACTOR = 0.35


def _hour_weight(hour: int) -> float:
    """Busy office hours, quiet nights."""
    return 0.15 + math.exp(-((hour - 14) ** 2) / 18)


def _keys_by_team(tenant: Tenant) -> list[ApiKey]:
    keys = []
    for team in tenant.teams.filter(is_active=True):
        key = ApiKey.objects.for_tenant(tenant).filter(team=team).first()
        keys.append(key or api_key_create(team=team, name=f"{team.slug} synthetic usage")[0])
    return keys


def seed_demo_usage(*, tenant: Tenant, days: int = 21, seed: int = 7) -> int:
    """Write `days` days of realistic ledger rows for the tenant's teams and allowed models, then build the rollups.

    Deterministic for a seed and a day: a rerun the same day writes the same request ids, which the ledger
    ignores. Returns the number of rows offered to the ledger.
    """
    access = TenantModelAccess.objects.prefetch_related("allowed_models").get(tenant=tenant)
    models = sorted(access.allowed_models.all(), key=lambda model: model.output_price_per_million)
    keys = _keys_by_team(tenant)
    if not models or not keys:
        raise ValueError(f"tenant '{tenant.slug}' needs at least one allowed model and one team")
    randomness = random.Random(seed)
    zone = tenant_zone(tenant=tenant)
    today = timezone.now().astimezone(zone).date()
    first_day = today - timedelta(days=days - 1)
    # Cheap models take most traffic; the priciest gets the hard questions.
    model_weights = [3.0 if index < len(models) - 1 else 1.0 for index in range(len(models))]
    records = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        volume = WEEKDAY_REQUESTS * (WEEKEND_FACTOR if day.weekday() >= 5 else 1.0) * randomness.uniform(0.8, 1.2)
        hours = [_hour_weight(hour) for hour in range(24)]
        for hour, weight in enumerate(hours):
            for _ in range(int(volume * weight / sum(hours))):
                key = randomness.choice(keys)
                model = randomness.choices(models, weights=model_weights)[0]
                moment = datetime(day.year, day.month, day.day, hour, tzinfo=zone) + timedelta(
                    seconds=randomness.randrange(3600)
                )
                records.append(_synthetic_record(randomness, tenant=tenant, key=key, model=model, moment=moment))
    now = timezone.now()
    records = [record for record in records if record.created_at <= now]
    UsageRecord.objects.bulk_create(records, batch_size=2000, ignore_conflicts=True)
    usage_rollups_rebuild(tenant=tenant, first=first_day, last=today)
    return len(records)


def _synthetic_record(randomness: random.Random, *, tenant, key, model, moment: datetime) -> UsageRecord:
    roll = randomness.random()
    cache_status = (
        CacheStatus.HIT_EXACT if roll < 0.12 else CacheStatus.HIT_SEMANTIC if roll < 0.18 else CacheStatus.MISS
    )
    failed = cache_status == CacheStatus.MISS and randomness.random() < 0.02
    prompt = int(randomness.lognormvariate(6.3, 0.7))
    completion = 0 if failed else int(randomness.lognormvariate(5.0, 0.6))
    cached = int(prompt * randomness.uniform(0, 0.5)) if randomness.random() < 0.3 else 0
    is_large = model.output_price_per_million > 1
    latency = (
        5 + randomness.randrange(15)
        if cache_status != CacheStatus.MISS
        else int(randomness.lognormvariate(6.6 if is_large else 6.0, 0.5) + completion * (8 if is_large else 3))
    )
    prices = ModelPrices(
        model.input_price_per_million, model.cached_input_price_per_million, model.output_price_per_million
    )
    answered_upstream = cache_status == CacheStatus.MISS and not failed
    cost = usage_cost(prices=prices, prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion)
    return UsageRecord(
        request_id=f"seed_{tenant.pk}_{moment.astimezone(UTC):%Y%m%d%H%M%S}_{randomness.getrandbits(40):010x}",
        tenant=tenant,
        team_id=key.team_id,
        api_key=key,
        requested_model="auto",
        served_model=model.name,
        is_stream=randomness.random() < 0.4,
        prompt_tokens=prompt,
        cached_tokens=cached if answered_upstream else 0,
        completion_tokens=completion,
        cost_usd=cost if answered_upstream else 0,
        upstream_latency_ms=max(latency - 8, 1) if answered_upstream else None,
        total_latency_ms=latency,
        cache_status=cache_status,
        routed_to_large=is_large and answered_upstream,
        http_status=502 if failed else 200,
        error_code="upstream_error" if failed else "",
        created_at=moment,
    )
