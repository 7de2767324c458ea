from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant and, optionally, its teams."

    def add_arguments(self, parser):
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", default="", help="Display name; the slug when left out.")
        parser.add_argument(
            "--team",
            dest="team_slugs",
            action="append",
            default=[],
            metavar="SLUG",
            help="A team to create; repeatable.",
        )

    def handle(self, *args, slug, name, team_slugs, **options):
        try:
            tenant = tenant_create(slug=slug, name=name, team_slugs=team_slugs)
        except ValidationError as error:
            raise CommandError(f"tenant '{slug}' not created: {' '.join(error.messages)}") from error
        teams = ", ".join(team.slug for team in tenant.teams.order_by("slug")) or "none"
        self.stdout.write(self.style.SUCCESS(f"Created tenant '{tenant.slug}' ({tenant.name}); teams: {teams}."))
