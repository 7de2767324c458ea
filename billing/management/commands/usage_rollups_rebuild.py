from datetime import date

from django.core.management.base import BaseCommand, CommandError

from billing.finance.rollups import usage_rollups_rebuild_since
from tenants.selectors import tenant_by_slug, tenants_active


class Command(BaseCommand):
    help = (
        "Rebuild the hourly and daily rollups from the ledger, from a day (in each tenant's time zone) to today, as "
        "beat does nightly for the last two days: for rollups written by an older release. It starts no earlier than "
        "a tenant's oldest ledger row, so days the retention purge emptied keep their rollups."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", required=True, metavar="YYYY-MM-DD")
        parser.add_argument("--tenant", dest="tenant_slug", metavar="SLUG", help="Default: every active tenant.")

    def handle(self, *args, since, tenant_slug, **options):
        try:
            day = date.fromisoformat(since)
        except ValueError:
            raise CommandError(f"--since '{since}' is not a date like 2026-01-31") from None
        if tenant_slug:
            tenant = tenant_by_slug(slug=tenant_slug)
            if tenant is None:
                raise CommandError(f"no tenant with slug '{tenant_slug}'")
            tenants = [tenant]
        else:
            tenants = list(tenants_active().order_by("slug"))
        for tenant in tenants:
            rebuilt = usage_rollups_rebuild_since(tenant=tenant, since=day)
            if rebuilt is None:
                self.stdout.write(f"{tenant.slug}: no ledger rows")
            else:
                self.stdout.write(f"{tenant.slug}: rebuilt {rebuilt[0].isoformat()} to {rebuilt[1].isoformat()}")
