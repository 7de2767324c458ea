"""Provider prompt caching as a lever: a routing rule says whether the gateway marks requests for the provider's prompt
cache (auto, the default, for every rule already drafted; published versions without it read as auto), and a Claude
model's blank cache-write price is saved as Anthropic's multiple of its input price (versions saved before keep
theirs)."""

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
            field=models.CharField(choices=[('auto', 'Checkpoints on the stable prefix (Claude on Anthropic and Bedrock)'), ('off', 'No checkpoints added')], default='auto', help_text="The provider's prompt cache: auto marks the system prompt, tools and earlier turns for it when they are long enough to be cached; a client's own cache_control is always kept.", max_length=4),
        ),
        migrations.AlterField(
            model_name='modelprice',
            name='cache_write_price_per_million',
            field=models.DecimalField(blank=True, decimal_places=6, help_text="Price of prompt tokens written to the provider's prompt cache. Left blank, a Claude model's (Anthropic, Bedrock) is saved as 1.25x its input price, Anthropic's; other models' charge the input price.", max_digits=12, null=True, validators=[django.core.validators.MinValueValidator(Decimal('0'))]),
        ),
    ]
