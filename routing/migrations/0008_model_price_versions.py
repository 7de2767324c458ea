"""Prices move from the model to versions of their own (ModelPrice): each model's prices become its first version,
in force since the model was created, so every price the ledger has charged so far stays the one in force then."""

from decimal import Decimal

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

PRICE_FIELDS = (
    "input_price_per_million",
    "cached_input_price_per_million",
    "output_price_per_million",
    "cache_write_price_per_million",
)


def first_versions(apps, schema_editor):
    Model = apps.get_model("routing", "Model")
    ModelPrice = apps.get_model("routing", "ModelPrice")
    ModelPrice.objects.bulk_create(
        ModelPrice(
            model=model,
            effective_from=model.created_at,
            source="the model's prices before versioning",
            **{name: getattr(model, name) for name in PRICE_FIELDS},
        )
        for model in Model._base_manager.all()
    )


def prices_back_on_models(apps, schema_editor):
    """Reversed: each model takes back the prices of its latest version."""
    Model = apps.get_model("routing", "Model")
    ModelPrice = apps.get_model("routing", "ModelPrice")
    for model in Model._base_manager.all():
        version = ModelPrice.objects.filter(model=model).order_by("-effective_from").first()
        if version is not None:
            for name in PRICE_FIELDS:
                setattr(model, name, getattr(version, name))
            model.save(update_fields=list(PRICE_FIELDS))


PRICE = {"decimal_places": 6, "max_digits": 12, "validators": [django.core.validators.MinValueValidator(Decimal("0"))]}


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0007_provider_region_only_where_read"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ModelPrice",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("effective_from", models.DateTimeField()),
                ("input_price_per_million", models.DecimalField(**PRICE)),
                (
                    "cached_input_price_per_million",
                    models.DecimalField(
                        **PRICE, help_text="Price of prompt tokens read from the provider's cache (cache reads)."
                    ),
                ),
                ("output_price_per_million", models.DecimalField(**PRICE)),
                (
                    "cache_write_price_per_million",
                    models.DecimalField(
                        **PRICE,
                        blank=True,
                        null=True,
                        help_text="Price of prompt tokens written to the provider's cache (Anthropic); blank charges "
                        "the input price.",
                    ),
                ),
                (
                    "source",
                    models.CharField(
                        help_text="Where the prices came from: the admin, a file imported, …", max_length=200
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "created_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "model",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="price_versions", to="routing.model"
                    ),
                ),
            ],
            options={
                "ordering": ["model", "-effective_from"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("model", "effective_from"), name="model_price_unique_effective_from"
                    )
                ],
            },
        ),
        # Nullable first, so that undoing this migration on a catalog with models can add the columns back (and
        # fill them) before they are required again.
        *(
            migrations.AlterField(model_name="model", name=name, field=models.DecimalField(**PRICE, null=True))
            for name in PRICE_FIELDS[:3]
        ),
        migrations.RunPython(first_versions, prices_back_on_models),
        *(migrations.RemoveField(model_name="model", name=name) for name in PRICE_FIELDS),
    ]
