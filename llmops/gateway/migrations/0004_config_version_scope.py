from django.db import migrations, models


def forget_versions(apps, schema_editor):
    """The one installation-wide row gives way to one row per slice; processes reload on their next request."""
    apps.get_model("gateway", "ConfigVersion").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("gateway", "0003_batch_idempotency_key"),
    ]

    operations = [
        migrations.RunPython(forget_versions, migrations.RunPython.noop),
        migrations.AddField(
            model_name="configversion",
            name="scope",
            field=models.CharField(default="", max_length=64, unique=True),
            preserve_default=False,
        ),
    ]
