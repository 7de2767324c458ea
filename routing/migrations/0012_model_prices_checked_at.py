"""When a model's prices were last confirmed still right, so their age can be reset without a new version."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('routing', '0011_model_prices_kept'),
    ]

    operations = [
        migrations.AddField(
            model_name='model',
            name='prices_checked_at',
            field=models.DateTimeField(blank=True, editable=False, help_text="When the prices were last confirmed still right (the admin's confirm action, or an import of equal prices); the price age counts from this or from when the prices in force took effect, whichever is later.", null=True),
        ),
    ]
