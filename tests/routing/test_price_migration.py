"""routing 0008 makes each model's prices its first version, in force since the model was created."""

from decimal import Decimal

from routing.models import Model

BEFORE = [("routing", "0007_provider_region_only_where_read")]
AFTER = [("routing", "0008_model_price_versions")]


def test_each_model_s_prices_become_its_first_version_and_come_back_when_undone(migrated):
    old = migrated(BEFORE)
    provider = old.get_model("routing", "Provider").objects.create(name="p", base_url="https://api.example.com/v1")
    created = old.get_model("routing", "Model").objects.create(
        name="priced",
        provider=provider,
        upstream_name="u",
        input_price_per_million=Decimal("2.5"),
        cached_input_price_per_million=Decimal("1.25"),
        output_price_per_million=Decimal("10"),
        cache_write_price_per_million=Decimal("3.125"),
    )

    new = migrated(AFTER)
    [version] = new.get_model("routing", "ModelPrice").objects.filter(model_id=created.pk)
    assert (version.effective_from, version.input_price_per_million, version.cached_input_price_per_million) == (
        created.created_at,
        Decimal("2.5"),
        Decimal("1.25"),
    )
    assert (version.output_price_per_million, version.cache_write_price_per_million) == (
        Decimal("10"),
        Decimal("3.125"),
    )

    migrated(BEFORE)
    undone = old.get_model("routing", "Model").objects.get(pk=created.pk)
    assert (undone.input_price_per_million, undone.output_price_per_million) == (Decimal("2.5"), Decimal("10"))

    migrated()
    assert Model.objects.get(pk=created.pk).price_in_force().output_price_per_million == Decimal("10")
