from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from routing.cache.store import CachePurgeIncomplete, cache_entries_purge
from tenants.selectors import tenant_by_slug


class Command(BaseCommand):
    help = "Delete a tenant's cached answers, optionally only one served model's, one rule's, or older ones."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--model", default="", help="served model name")
        parser.add_argument("--rule", default="", help="routing rule name")
        parser.add_argument("--older-than", type=float, metavar="DAYS", help="only entries created before this age")

    def handle(self, *args, tenant, model, rule, older_than, **options):
        found = tenant_by_slug(slug=tenant)
        if found is None:
            raise CommandError(f"no tenant with slug {tenant!r}")
        if older_than is not None and older_than < 0:
            raise CommandError("--older-than must be zero or more days")
        age = timedelta(days=older_than) if older_than is not None else None
        try:
            deleted = cache_entries_purge(tenant=found, model=model, rule=rule, older_than=age)
        except CachePurgeIncomplete as incomplete:
            raise CommandError(str(incomplete)) from incomplete
        self.stdout.write(f"deleted {deleted} cache entries of {found.slug}")
