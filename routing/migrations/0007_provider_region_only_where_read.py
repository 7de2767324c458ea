"""Blank the region of providers whose kind does not read it (only Bedrock does): Provider.clean() now refuses a
field its kind ignores, and a stray region typed before would block every later edit of the provider."""

from django.db import migrations


def blank_unread_regions(apps, schema_editor):
    Provider = apps.get_model("routing", "Provider")
    Provider._base_manager.exclude(kind="bedrock").exclude(region="").update(region="")


class Migration(migrations.Migration):
    dependencies = [("routing", "0006_cache_entries_at_rest")]

    operations = [migrations.RunPython(blank_unread_regions, migrations.RunPython.noop)]
