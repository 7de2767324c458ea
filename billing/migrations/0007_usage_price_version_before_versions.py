"""The ledger's price version says it is empty on rows written before prices were versioned (help text only)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0006_usage_price_version'),
        ('routing', '0008_model_price_versions'),
    ]

    operations = [
        migrations.AlterField(
            model_name='usagerecord',
            name='price_version',
            field=models.ForeignKey(blank=True, db_index=False, help_text="The served model's prices the cost was computed at; empty when no model served the request, and on rows written before prices were versioned (migration billing 0006): their cost stands, its prices are not recorded.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='routing.modelprice'),
        ),
    ]
