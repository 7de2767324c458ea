"""routing 0007 blanks a region that a provider's kind does not read, and keeps Bedrock's."""

BEFORE = [("routing", "0006_cache_entries_at_rest")]
AFTER = [("routing", "0007_provider_region_only_where_read")]


def test_a_stray_region_is_blanked_and_bedrocks_is_kept(migrated):
    Provider = migrated(BEFORE).get_model("routing", "Provider")
    stray = Provider.objects.create(name="oai", kind="openai", base_url="https://api.openai.com/v1", region="eu-west-1")
    aws = Provider.objects.create(name="aws", kind="bedrock", base_url="", region="us-east-1")

    Provider = migrated(AFTER).get_model("routing", "Provider")
    assert Provider.objects.get(pk=stray.pk).region == ""
    assert Provider.objects.get(pk=aws.pk).region == "us-east-1"
