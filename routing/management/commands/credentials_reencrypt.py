from django.core.management.base import BaseCommand, CommandError

from core.crypto import encrypted_secrets_reencrypt


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored credential and signing secret with the first key of LLMOPS_ENCRYPTION_KEY. "
        "Run after putting a new key first; remove the old key once this has succeeded."
    )

    def handle(self, *args, **options):
        result = encrypted_secrets_reencrypt()
        self.stdout.write(f"re-encrypted {result.reencrypted} secret(s)")
        if result.undecryptable:
            raise CommandError(
                f"{len(result.undecryptable)} secret(s) cannot be decrypted with any configured key: "
                + ", ".join(result.undecryptable)
            )
