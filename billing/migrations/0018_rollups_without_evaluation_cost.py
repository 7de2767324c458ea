"""Rollups built before 0014 (evaluation_cost_usd) counted the shadow evaluations' calls (ledger rows of kind
`evaluation`, written since the shadow-evaluation release) in their product totals: cost, tokens and the top
customers' spend, with no evaluation cost apart. Each tenant that has such rows gets its rollups rebuilt from the ledger, from the local day of
its first one to today; the nightly rebuild only covers two days.

A tenant has evaluation rows only in a month it has an EvaluationSpend row for (the budget is reserved before every
evaluation call), so those few rows say which tenants to look at and from when; the first evaluation row is then
found on the ledger's (tenant, created_at) index from that month on. Without evaluation rows (a new database, or one
that never sampled) it does nothing.

It rebuilds with the rollup code of the release it ships with (billing.finance.rollups), on this release's schema:
a database upgraded past this migration from a release before the shadow evaluation's has no evaluation rows to
rebuild for.
"""

from datetime import UTC, datetime, time

from django.db import migrations


def rollups_rebuild_from_first_evaluation(apps, schema_editor):
    from billing.finance.rollups import usage_rollups_rebuild
    from billing.ledger.selectors import tenant_zone
    from tenants.models import Tenant

    EvaluationSpend = apps.get_model("billing", "EvaluationSpend")
    UsageRecord = apps.get_model("billing", "UsageRecord")
    first_months: dict[int, datetime] = {}
    for tenant_id, month in EvaluationSpend.objects.order_by("month").values_list("tenant_id", "month"):
        first_months.setdefault(tenant_id, datetime.combine(month, time.min, tzinfo=UTC))
    for tenant in Tenant.objects.unscoped().filter(pk__in=first_months):
        first = (
            UsageRecord.objects.filter(tenant_id=tenant.pk, kind="evaluation", created_at__gte=first_months[tenant.pk])
            .order_by("created_at")
            .values_list("created_at", flat=True)
            .first()
        )
        if first is None:
            continue
        zone = tenant_zone(tenant=tenant)
        usage_rollups_rebuild(tenant=tenant, first=first.astimezone(zone).date(), last=datetime.now(zone).date())


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0017_shadow_evaluation_reason_sealed"),
        ("tenants", "0003_tenant_max_inflight_requests"),
    ]

    operations = [
        migrations.RunPython(rollups_rebuild_from_first_evaluation, migrations.RunPython.noop),
    ]
