"""The provider_cache lever: what each request saved through the provider's prompt cache, and that saving in the
rollups. Rows written before keep 0: the ledger is never changed, so the lever counts from here. The columns have a
database default, so a drainer or worker still on the code from before inserts rows without them (docs/runbook.md)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0007_usage_price_version_before_versions'),
    ]

    operations = [
        migrations.AddField(
            model_name='usagerecord',
            name='saved_provider_cache_usd',
            field=models.DecimalField(db_default=0, decimal_places=10, default=0, help_text="The prompt at the input price, minus what its cache reads and writes cost at the cache prices (negative for a request that only wrote to the provider's prompt cache).", max_digits=20),
        ),
        migrations.AddField(
            model_name='usagerollupdaily',
            name='saved_provider_cache_usd',
            field=models.DecimalField(db_default=0, decimal_places=10, default=0, max_digits=20),
        ),
        migrations.AddField(
            model_name='usagerolluphourly',
            name='saved_provider_cache_usd',
            field=models.DecimalField(db_default=0, decimal_places=10, default=0, max_digits=20),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='cache_write_tokens',
            field=models.PositiveIntegerField(default=0, help_text="Prompt tokens written to the provider's prompt cache (Anthropic, Bedrock)."),
        ),
    ]
