"""billing 0018: rollups built before evaluation calls were kept apart (0014) counted them as product spend; the
migration rebuilds them for each tenant with evaluation calls, from the day of its first one."""

from datetime import UTC, timedelta
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from billing.finance.rollups import usage_rollups_rebuild
from billing.models import EvaluationSpend, UsageKind, UsageRecord, UsageRollupDaily, UsageRollupHourly
from tests.finance.conftest import make_finance_tenant, usage_row

BEFORE = [("billing", "0017_shadow_evaluation_reason_sealed")]


def evaluation_row(api_key, *, created_at, cost: str) -> UsageRecord:
    row = usage_row(api_key, created_at=created_at, cost=cost, model="m-large")
    row.kind = UsageKind.EVALUATION
    return row


def as_old_code_built(tenant, day) -> None:
    """The day's rollups as a rollup of the release before 0014 left them: the evaluation call's cost in the product
    cost, none apart."""
    for rollups in (
        UsageRollupDaily.objects.for_tenant(tenant).filter(day=day),
        UsageRollupHourly.objects.for_tenant(tenant).filter(bucket_start__date=day),
    ):
        for rollup in rollups:
            rollup.cost_usd += rollup.evaluation_cost_usd
            rollup.evaluation_cost_usd = Decimal(0)
            rollup.save(update_fields=["cost_usd", "evaluation_cost_usd"])


def test_tenants_with_evaluation_calls_get_their_rollups_rebuilt_from_the_first_ones_day(migrated):
    migrated(BEFORE)
    acme, globex = make_finance_tenant("acme"), make_finance_tenant("globex")
    now = timezone.now().astimezone(UTC)
    evaluated, earlier = now - timedelta(hours=1), now - timedelta(days=40)
    UsageRecord.objects.bulk_create(
        [
            usage_row(acme.keys[0], created_at=earlier, cost="0.5"),
            usage_row(acme.keys[0], created_at=evaluated, cost="0.1"),
            evaluation_row(acme.keys[0], created_at=evaluated, cost="0.02"),
            usage_row(globex.keys[0], created_at=evaluated, cost="0.3"),
        ]
    )
    EvaluationSpend.objects.create(tenant=acme.tenant, month=evaluated.date().replace(day=1), spent_usd=Decimal("0.02"))
    for tenant in (acme.tenant, globex.tenant):
        usage_rollups_rebuild(tenant=tenant, first=earlier.date(), last=now.date())
    as_old_code_built(acme.tenant, evaluated.date())
    # Wrong in a way only a rebuild would put right: rebuilt, these would change.
    UsageRollupDaily.objects.for_tenant(acme.tenant).filter(day=earlier.date()).update(requests=99)
    UsageRollupDaily.objects.for_tenant(globex.tenant).filter(day=evaluated.date()).update(requests=99)

    migrated()

    for rollups in (
        UsageRollupDaily.objects.for_tenant(acme.tenant).filter(day=evaluated.date()),
        UsageRollupHourly.objects.for_tenant(acme.tenant).filter(bucket_start__date=evaluated.date()),
    ):
        assert rollups.aggregate(cost=Sum("cost_usd"), evaluation=Sum("evaluation_cost_usd")) == {
            "cost": Decimal("0.1"),
            "evaluation": Decimal("0.02"),
        }
    # Before the first evaluation call, and another tenant's: left as they were.
    assert UsageRollupDaily.objects.for_tenant(acme.tenant).get(day=earlier.date()).requests == 99
    assert UsageRollupDaily.objects.for_tenant(globex.tenant).get(day=evaluated.date()).requests == 99
