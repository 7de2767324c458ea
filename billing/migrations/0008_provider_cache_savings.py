"""The provider_cache lever: what each request saved through the provider's prompt cache, and the cache-write tokens and
that saving in the rollups. Rows written before keep 0: the ledger is never changed, so the lever counts from here."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0007_usage_price_version_before_versions'),
    ]

    operations = [
        migrations.AddField(
            model_name='usagerecord',
            name='saved_provider_cache_usd',
            field=models.DecimalField(decimal_places=10, default=0, help_text="The prompt at the input price, minus what its cache reads and writes cost at the cache prices (negative for a request that only wrote to the provider's prompt cache).", max_digits=20),
        ),
        migrations.AddField(
            model_name='usagerollupdaily',
            name='cache_write_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerollupdaily',
            name='saved_provider_cache_usd',
            field=models.DecimalField(decimal_places=10, default=0, max_digits=20),
        ),
        migrations.AddField(
            model_name='usagerolluphourly',
            name='cache_write_tokens',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagerolluphourly',
            name='saved_provider_cache_usd',
            field=models.DecimalField(decimal_places=10, default=0, max_digits=20),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='cache_write_tokens',
            field=models.PositiveIntegerField(default=0, help_text="Prompt tokens written to the provider's prompt cache (Anthropic, Bedrock)."),
        ),
    ]
