from datetime import date, datetime, time

from django.core.management.base import BaseCommand, CommandError

from billing.ledger.services import usage_records_purge
from tenants.selectors import tenant_by_slug
from tenants.time_zones import tenant_zone_or_utc


class Command(BaseCommand):
    help = (
        "The ledger's retention purge: delete usage records created before a day (midnight UTC, or the tenant's "
        "time zone with --tenant). The only way ledger rows are removed; rollups keep their totals."
    )

    def add_arguments(self, parser):
        parser.add_argument("--before", required=True, metavar="YYYY-MM-DD")
        parser.add_argument("--tenant", dest="tenant_slug", metavar="SLUG", help="Only this tenant's records.")

    def handle(self, *args, before, tenant_slug, **options):
        try:
            day = date.fromisoformat(before)
        except ValueError:
            raise CommandError(f"--before '{before}' is not a date like 2026-01-31") from None
        tenant = None
        if tenant_slug:
            tenant = tenant_by_slug(slug=tenant_slug)
            if tenant is None:
                raise CommandError(f"no tenant with slug '{tenant_slug}'")
        zone = tenant_zone_or_utc(tenant.time_zone if tenant else "UTC")
        deleted = usage_records_purge(before=datetime.combine(day, time.min, tzinfo=zone), tenant=tenant)
        self.stdout.write(f"Deleted {deleted} usage records created before {day.isoformat()} ({zone.key}).")
