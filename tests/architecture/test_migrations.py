"""The migrations match the models and form one line per app: branches merged side by side can each add a migration
with the same number, which leaves two leaves and stops `migrate` on every deploy."""

from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_models_and_migrations_agree_with_one_leaf_per_app():
    output = StringIO()
    # --check exits non-zero on a missing migration; conflicting leaves raise CommandError before that.
    call_command("makemigrations", "--check", "--dry-run", stdout=output, stderr=output)
