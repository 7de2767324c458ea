"""Provider prompt caching as a lever: a routing rule says whether the gateway marks requests for the provider's prompt
cache. It is off for every rule (drafted before or after, and in versions published without it) until a rule opts in:
the provider's cache is shared by every tenant behind the same provider credential. The column has a database default,
so a process still on the code from before inserts rules without it (docs/runbook.md). A Claude model's blank
cache-write price is saved as Anthropic's multiple of its input price (versions saved before keep theirs)."""

import django.core.validators
from decimal import Decimal
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('routing', '0012_model_prices_checked_at'),
    ]

    operations = [
        migrations.AddField(
            model_name='routingrule',
            name='provider_cache',
            field=models.CharField(choices=[('auto', 'Checkpoints on the stable prefix (Claude on Anthropic and Bedrock)'), ('off', 'No checkpoints added')], db_default='off', default='off', help_text="The provider's prompt cache: auto marks the system prompt, tools and earlier turns for it when they are long enough to be cached, on a Claude model whose cache-write and cache-read prices are set; a client's own cache_control is always kept. The provider's cache is shared by every tenant using the same provider credential: another tenant sending the same prefix sees it read from the cache (cached_tokens), and so learns it was sent. Turn it on for rules whose prompts are not secret, or whose provider credential is the tenant's own.", max_length=4),
        ),
        migrations.AlterField(
            model_name='modelprice',
            name='cache_write_price_per_million',
            field=models.DecimalField(blank=True, decimal_places=6, help_text="Price of prompt tokens written to the provider's prompt cache. Left blank, a Claude model's (Anthropic, Bedrock) is saved as 1.25x its input price, Anthropic's; other models' charge the input price. The gateway marks prompts for the provider's cache only on prices with this set and a cached-input price below the input price (an older version without them charges writes at the input price).", max_digits=12, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
    ]
