from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants.audit import audit_actor
from tenants.management.arguments import number_of
from tenants.models import ApiKey
from tenants.services import api_key_rotate


class Command(BaseCommand):
    help = "Rotate a gateway API key: print a successor (once) and let the old key work for the overlap, then expire."

    def add_arguments(self, parser):
        parser.add_argument("--prefix", required=True, help="The prefix of the key to rotate (shown in the admin).")
        parser.add_argument(
            "--overlap-hours",
            type=number_of("hours", at_least=0),
            default=24.0,
            help="How long the old key keeps working.",
        )

    def handle(self, *args, prefix, overlap_hours, **options):
        # Unscoped, reviewed: the platform's operator rotates a key of any tenant, named by its prefix.
        api_key = ApiKey.objects.unscoped().select_related("team__tenant").filter(prefix=prefix).first()
        if api_key is None:
            raise CommandError(f"no API key with prefix '{prefix}'")
        with audit_actor(name="manage.py rotate_api_key"):
            try:
                successor, full_key = api_key_rotate(api_key=api_key, overlap=timedelta(hours=overlap_hours))
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Created API key {successor.prefix} for {successor.team}; "
                f"{api_key.prefix} stops working at {api_key.expires_at:%Y-%m-%d %H:%M %Z}:"
            )
        )
        self.stdout.write(full_key)
        self.stdout.write("Store it now: it cannot be shown again.")
