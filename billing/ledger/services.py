from dataclasses import asdict
from datetime import datetime

from django.db import connection, transaction

from billing.ledger.events import UsageEvent
from billing.models import UsageRecord
from tenants.models import Tenant


def usage_record_create(*, event: UsageEvent) -> None:
    """Write the ledger row for a request in one INSERT. Idempotent on request_id: a replay changes nothing."""
    UsageRecord.objects.bulk_create([UsageRecord(**asdict(event))], ignore_conflicts=True)


@transaction.atomic
def usage_records_purge(*, before: datetime, tenant: Tenant | None = None) -> int:
    """The retention purge, the one way ledger rows leave: those created before `before` (of one tenant, or all).

    On Postgres the append-only trigger lets the DELETE through only in a transaction that set llmops.ledger_purge.
    Rollups already built keep their totals. Returns how many rows were deleted.
    """
    # Unscoped without a tenant, reviewed: the operator's retention purge (manage.py ledger_purge) reads no row.
    records = UsageRecord.objects.for_tenant(tenant) if tenant is not None else UsageRecord.objects.unscoped()
    records = records.filter(created_at__lt=before)
    if connection.vendor != "postgresql":
        return records.retention_purge()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL llmops.ledger_purge = 'on'")
        try:
            return records.retention_purge()
        finally:
            # Off again at once, also when the caller's transaction goes on after the purge.
            cursor.execute("SET LOCAL llmops.ledger_purge = 'off'")
