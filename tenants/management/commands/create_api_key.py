from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from tenants.management.arguments import number_of
from tenants.models import Team
from tenants.selectors import tenant_by_slug
from tenants.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a team of a tenant. The key is printed once and cannot be shown again."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", dest="tenant_slug", required=True, metavar="SLUG")
        parser.add_argument("--team", dest="team_slug", required=True, metavar="SLUG", help="A team of that tenant.")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--expires-in-days",
            type=number_of("days", at_least=1, whole=True),
            metavar="DAYS",
            help="Never expires when left out.",
        )

    def handle(self, *args, tenant_slug, team_slug, name, expires_in_days, **options):
        tenant = tenant_by_slug(slug=tenant_slug)
        if tenant is None:
            raise CommandError(f"no tenant with slug '{tenant_slug}'")
        team = Team.objects.for_tenant(tenant).filter(slug=team_slug).first()
        if team is None:
            raise CommandError(f"tenant '{tenant.slug}' has no team '{team_slug}'")
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None

        api_key, full_key = api_key_create(team=team, name=name, expires_at=expires_at)
        expiry = f"expires {api_key.expires_at:%Y-%m-%d %H:%M %Z}" if api_key.expires_at else "never expires"
        self.stdout.write(self.style.SUCCESS(f"Created API key {api_key.prefix} for {team} ({expiry}):"))
        self.stdout.write(full_key)
        self.stdout.write("Store it now: it cannot be shown again.")
