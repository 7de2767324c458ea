"""Rolling out routing 0013-0014 and billing 0008-0011: after `migrate`, processes still on the code from before
(drainers, gateways, workers) keep inserting ledger rows, rollups and rules without the new columns, which the database
fills in or leaves null (docs/runbook.md)."""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from billing.models import UsageRecord, UsageRollupDaily, UsageRollupHourly
from routing.models import RoutingRule
from routing.services import routing_policy_create
from tenants.models import ApiKey
from tests.factories import TeamFactory

BEFORE = [("routing", "0012_model_prices_checked_at"), ("billing", "0007_usage_price_version_before_versions")]


def code_from_before():
    """The models as the code from before the provider_cache lever knew them, on the schema of now."""
    return MigrationExecutor(connection).loader.project_state(BEFORE).apps


def test_rules_and_ledger_rows_inserted_by_the_code_from_before_take_the_columns_defaults(acme_routing):
    old = code_from_before()
    policy = routing_policy_create(tenant=acme_routing.tenant)
    team = TeamFactory(tenant=acme_routing.tenant)
    key = ApiKey.objects.create(tenant=acme_routing.tenant, team=team, prefix="sk-old", secret_hash="0" * 64)
    moment = datetime(2026, 12, 1, 10, tzinfo=UTC)
    tenant_and_team = {"tenant_id": acme_routing.tenant.pk, "team_id": team.pk}

    rule = old.get_model("routing", "RoutingRule").objects.create(policy_id=policy.pk, priority=10, name="old-rule")
    record = old.get_model("billing", "UsageRecord").objects.create(
        request_id="req-old", api_key_id=key.pk, created_at=moment, http_status=200, **tenant_and_team
    )
    hourly = old.get_model("billing", "UsageRollupHourly").objects.create(bucket_start=moment, **tenant_and_team)
    daily = old.get_model("billing", "UsageRollupDaily").objects.create(day=moment.date(), **tenant_and_team)

    # The rule gets no checkpoint of the gateway's unless it opts in; the rows saved nothing through the provider.
    assert RoutingRule.objects.for_tenant(acme_routing.tenant).get(pk=rule.pk).provider_cache == "off"
    row = UsageRecord.objects.unscoped().get(pk=record.pk)
    assert row.saved_provider_cache_usd == Decimal(0)
    # No end customer, and routing features unknown (the what-if's "has_tools empty").
    assert (row.customer, row.task_type, row.user_tier) == ("", "", "")
    assert (row.has_tools, row.has_images, row.difficulty_score) == (None, None, None)
    assert UsageRollupHourly.objects.unscoped().get(pk=hourly.pk).saved_provider_cache_usd == Decimal(0)
    assert UsageRollupDaily.objects.unscoped().get(pk=daily.pk).saved_provider_cache_usd == Decimal(0)
