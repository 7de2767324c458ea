"""A model's price versions are kept: deleting a model with prices is refused (PROTECT, no SQL change), so no
deletion ever searches the unindexed ledger for rows priced at a version."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('routing', '0010_cache_indexes_built_concurrently'),
    ]

    operations = [
        migrations.AlterField(
            model_name='model',
            name='is_active',
            field=models.BooleanField(default=True, help_text="Untick to retire the model. A model with prices is never deleted: its price versions are what the ledger's costs were charged at."),
        ),
        migrations.AlterField(
            model_name='modelprice',
            name='model',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='price_versions', to='routing.model'),
        ),
    ]
