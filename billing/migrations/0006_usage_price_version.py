"""The ledger row keeps the price version its cost was computed at, so past costs say which prices they used."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0005_usage_kind_and_parent'),
        ('routing', '0008_model_price_versions'),
    ]

    operations = [
        migrations.AddField(
            model_name='usagerecord',
            name='price_version',
            field=models.ForeignKey(blank=True, db_index=False, help_text="The served model's prices the cost was computed at; empty when no model served the request.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='routing.modelprice'),
        ),
    ]
