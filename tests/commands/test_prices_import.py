"""manage.py prices_import: LiteLLM's cost map and our CSV become price versions, exactly, all or nothing."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from routing.models import Model, ModelKind, ModelPrice
from tests.factories import ModelFactory, ProviderFactory

FILES = Path(__file__).parent / "price_files"
LITELLM = FILES / "litellm_cost_map.json"
CATALOG_CSV = FILES / "catalog_prices.csv"


def prices_import(*args) -> str:
    stdout = StringIO()
    call_command("prices_import", *map(str, args), stdout=stdout)
    return stdout.getvalue()


def in_force(name: str, at=None) -> dict:
    return Model.objects.get(name=name).price_in_force(at).prices()


def version_count() -> int:
    return ModelPrice.objects.count()


@pytest.fixture
def catalog(db):
    provider = ProviderFactory(name="anthropic")
    return {
        # Priced below the cost map: the import raises it.
        "gpt-4o-mini": ModelFactory(
            name="gpt-4o-mini",
            input_price_per_million=Decimal("0.10"),
            cached_input_price_per_million=Decimal("0.05"),
            output_price_per_million=Decimal("0.40"),
        ),
        # Already at the cost map's prices: nothing to add.
        "claude-3-5-sonnet-20241022": ModelFactory(
            name="claude-3-5-sonnet-20241022",
            provider=provider,
            input_price_per_million=Decimal("3"),
            cached_input_price_per_million=Decimal("0.3"),
            output_price_per_million=Decimal("15"),
            cache_write_price_per_million=Decimal("3.75"),
        ),
        # Named `anthropic/claude-3-5-haiku-20241022` in the cost map.
        "claude-3-5-haiku-20241022": ModelFactory(name="claude-3-5-haiku-20241022", provider=provider),
    }


def test_litellm_cost_map_prices_become_versions_per_million_exactly(catalog):
    output = prices_import(LITELLM, "--strip-prefix", "anthropic/")

    # Per token in the file, per million in the catalog: 1.5e-07 is exactly 0.15 (through a float, 0.15000000000000002).
    assert in_force("gpt-4o-mini") == {
        "input_price_per_million": Decimal("0.15"),
        "cached_input_price_per_million": Decimal("0.075"),
        "output_price_per_million": Decimal("0.6"),
        "cache_write_price_per_million": None,
    }
    assert in_force("claude-3-5-haiku-20241022") == {
        "input_price_per_million": Decimal("0.8"),
        "cached_input_price_per_million": Decimal("0.08"),
        "output_price_per_million": Decimal("4"),
        "cache_write_price_per_million": Decimal("1"),
    }
    sonnet = Model.objects.get(name="claude-3-5-sonnet-20241022")
    assert sonnet.price_versions.count() == 1
    haiku_version = Model.objects.get(name="claude-3-5-haiku-20241022").price_in_force()
    assert haiku_version.source == "prices_import litellm_cost_map.json"
    assert "gpt-4o-mini  input_price_per_million: 0.1 → 0.15" in output
    assert "claude-3-5-sonnet" not in output.split("skipped")[0]
    assert "1 skipped, no catalog model of that name (--create adds them): gemini-1.5-flash-exp-0827" in output
    assert "ignored, not priced per input and output token: dall-e-3" in output
    assert "2 model(s) with new prices, 0 to create, 1 unchanged" in output


def test_a_provider_prefixed_name_matches_only_with_its_prefix_stripped(catalog):
    output = prices_import(LITELLM)

    assert Model.objects.get(name="claude-3-5-haiku-20241022").price_versions.count() == 1
    assert "anthropic/claude-3-5-haiku-20241022" in output.split("skipped")[1]


def test_the_same_file_again_adds_no_version(catalog):
    prices_import(LITELLM, "--strip-prefix", "anthropic/")
    count = version_count()

    output = prices_import(LITELLM, "--strip-prefix", "anthropic/")

    assert version_count() == count
    assert "0 model(s) with new prices, 0 to create, 3 unchanged" in output


def test_dry_run_prints_the_diff_and_changes_nothing(catalog):
    count = version_count()

    output = prices_import(LITELLM, "--strip-prefix", "anthropic/", "--dry-run")

    assert version_count() == count
    assert in_force("gpt-4o-mini")["input_price_per_million"] == Decimal("0.10")
    assert "gpt-4o-mini  input_price_per_million: 0.1 → 0.15" in output
    assert "gpt-4o-mini  output_price_per_million: 0.4 → 0.6" in output
    assert "claude-3-5-haiku-20241022  cache_write_price_per_million: — → 1" in output
    assert "Dry run" in output and "Nothing was changed" in output


def test_csv_prices_with_a_future_date_wait_for_it(db):
    ModelFactory(name="acme-small")
    ModelFactory(name="acme-large", input_price_per_million=Decimal("2"), output_price_per_million=Decimal("8"))
    monday = (timezone.now() + timedelta(days=7)).date()

    prices_import(CATALOG_CSV, "--effective-from", monday.isoformat())

    assert in_force("acme-small")["input_price_per_million"] == Decimal("0.15")
    later = timezone.now() + timedelta(days=8)
    assert in_force("acme-small", later) == {
        "input_price_per_million": Decimal("0.2"),
        "cached_input_price_per_million": Decimal("0.1"),
        "output_price_per_million": Decimal("0.8"),
        "cache_write_price_per_million": None,
    }
    assert in_force("acme-large", later)["output_price_per_million"] == Decimal("10")
    upcoming = Model.objects.get(name="acme-large").price_versions.latest("effective_from")
    assert upcoming.effective_from.isoformat() == f"{monday.isoformat()}T00:00:00+00:00"


def test_create_adds_the_catalog_s_missing_models_on_the_named_provider(catalog):
    ProviderFactory(name="vertex")

    prices_import(LITELLM, "--litellm-provider", "vertex_ai-language-models", "--create", "--provider", "vertex")

    created = Model.objects.get(name="gemini-1.5-flash-exp-0827")
    assert (created.provider.name, created.upstream_name, created.context_window) == (
        "vertex",
        "gemini-1.5-flash-exp-0827",
        1_000_000,
    )
    assert created.price_in_force().prices() == {
        "input_price_per_million": Decimal("0.004688"),
        "cached_input_price_per_million": Decimal("0.004688"),
        "output_price_per_million": Decimal("0.01875"),
        "cache_write_price_per_million": None,
    }
    assert not Model.objects.filter(name="gpt-4o-mini", provider__name="vertex").exists()


def test_an_embedding_model_of_litellm_s_map_is_created_as_one(catalog, tmp_path):
    ProviderFactory(name="openai")
    cost_map = (
        '{"text-embedding-3-small": {"max_input_tokens": 8191, "input_cost_per_token": 2e-08, '
        '"output_cost_per_token": 0.0, "litellm_provider": "openai", "mode": "embedding"}}'
    )

    prices_import(write(tmp_path, "embeddings.json", cost_map), "--create", "--provider", "openai")

    created = Model.objects.get(name="text-embedding-3-small")
    assert (created.kind, created.context_window) == (ModelKind.EMBEDDING, 8191)
    assert in_force("text-embedding-3-small")["input_price_per_million"] == Decimal("0.02")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("broken.json", '{"gpt-4o-mini": {"input_cost_per_token": 1e-07,', "not valid JSON"),
        (
            "negative.csv",
            "model,input_price_per_million,output_price_per_million\ngpt-4o-mini,0.2,0.8\nclaude-3-5-sonnet-20241022,"
            "-1,2\n",
            "not a price",
        ),
        (
            "words.csv",
            "model,input_price_per_million,output_price_per_million\ngpt-4o-mini,0.2,0.8\nclaude-3-5-sonnet-20241022,"
            "cheap,2\n",
            "'cheap' is not a number",
        ),
        ("columns.csv", "model,input,output_price_per_million\ngpt-4o-mini,0.2,0.8\n", r"unknown column\(s\) input"),
        (
            "places.json",
            '{"gpt-4o-mini": {"input_cost_per_token": 2e-07, "output_cost_per_token": 8e-07},'
            ' "claude-3-5-sonnet-20241022": {"input_cost_per_token": 4.6875e-09, "output_cost_per_token": 1e-06}}',
            "no more than 6 decimal places",
        ),
    ],
)
def test_a_bad_file_is_a_clear_error_and_changes_nothing(catalog, tmp_path, name, text, message):
    count = version_count()

    with pytest.raises(CommandError, match=message) as refused:
        prices_import(write(tmp_path, name, text))

    assert "Nothing was changed" in str(refused.value)
    assert version_count() == count
    assert in_force("gpt-4o-mini")["input_price_per_million"] == Decimal("0.10")


def test_an_effective_date_in_the_past_is_refused(catalog):
    with pytest.raises(CommandError, match="in the past"):
        prices_import(LITELLM, "--effective-from", (timezone.now() - timedelta(days=1)).isoformat())

    assert in_force("gpt-4o-mini")["input_price_per_million"] == Decimal("0.10")


def test_create_without_a_provider_is_refused(catalog):
    with pytest.raises(CommandError, match="--create needs --provider"):
        prices_import(LITELLM, "--create")


def test_a_model_to_create_needs_its_input_and_output_prices(catalog, tmp_path):
    path = write(tmp_path, "partial.csv", "model,input_price_per_million\nbrand-new,1\n")

    with pytest.raises(CommandError, match="brand-new: a model created needs its output_price_per_million"):
        prices_import(path, "--create", "--provider", "anthropic")

    assert not Model.objects.filter(name="brand-new").exists()


def test_prices_now_are_refused_while_a_version_is_scheduled_and_nothing_is_undone(db, tmp_path):
    ModelFactory(
        name="acme-small",
        input_price_per_million=Decimal("1"),
        cached_input_price_per_million=Decimal("0.5"),
        output_price_per_million=Decimal("2"),
    )
    tomorrow = (timezone.now() + timedelta(days=1)).date()
    prices_import(
        write(tmp_path, "next.csv", "model,input_price_per_million\nacme-small,0.9\n"),
        "--effective-from",
        tomorrow.isoformat(),
    )
    count = version_count()

    with pytest.raises(CommandError, match=rf"acme-small has prices scheduled to take effect at {tomorrow}T00:00:00"):
        prices_import(write(tmp_path, "now.csv", "model,output_price_per_million\nacme-small,3\n"))

    assert version_count() == count
    day_after = timezone.now() + timedelta(days=2)
    assert in_force("acme-small")["output_price_per_million"] == Decimal("2")
    assert (
        in_force("acme-small", day_after)["input_price_per_million"],
        in_force("acme-small", day_after)["output_price_per_million"],
    ) == (Decimal("0.9"), Decimal("2"))


def test_without_an_effective_date_a_version_starts_when_it_is_written_not_when_the_command_started(
    catalog, monkeypatch
):
    from routing.management.commands import prices_import as command

    read = command.price_file_entries
    read_at = []

    def read_then_note_the_time(path):
        entries = read(path)
        read_at.append(timezone.now())
        return entries

    monkeypatch.setattr(command, "price_file_entries", read_then_note_the_time)

    output = prices_import(LITELLM, "--strip-prefix", "anthropic/")

    version = Model.objects.get(name="gpt-4o-mini").price_in_force()
    assert read_at[0] <= version.effective_from <= version.created_at
    assert "effective now" in output


def test_an_import_of_unchanged_prices_confirms_them(catalog):
    sonnet = catalog["claude-3-5-sonnet-20241022"]
    ModelPrice.objects.filter(model=sonnet).update(effective_from=timezone.now() - timedelta(days=120))

    prices_import(LITELLM, "--strip-prefix", "anthropic/", "--dry-run")
    sonnet.refresh_from_db()
    assert sonnet.prices_checked_at is None

    before = timezone.now()
    output = prices_import(LITELLM, "--strip-prefix", "anthropic/")

    sonnet.refresh_from_db()
    assert sonnet.prices_checked_at >= before
    assert sonnet.price_versions.count() == 1
    assert "the prices of 1 confirmed" in output


@pytest.fixture
def claude_models(db):
    """Claude on Anthropic's API and on Bedrock, and an OpenAI model, priced by hand before the import."""
    anthropic = ProviderFactory(name="anthropic-api", kind="anthropic")
    bedrock = ProviderFactory(name="bedrock-us", kind="bedrock", base_url="", region="us-east-1")
    return [
        ModelFactory(name="claude-sonnet", provider=anthropic, upstream_name="claude-sonnet-4-20250514"),
        ModelFactory(name="bedrock-sonnet", provider=bedrock, upstream_name="anthropic.claude-sonnet-4-20250514-v1:0"),
        ModelFactory(name="gpt-mini", upstream_name="gpt-4o-mini"),
    ]


def test_a_claude_models_cache_prices_the_file_leaves_out_are_anthropics_multiples(claude_models, tmp_path):
    path = write(
        tmp_path,
        "prices.csv",
        "model,input_price_per_million,output_price_per_million\n"
        "claude-sonnet,3,15\nbedrock-sonnet,3.3,16.5\ngpt-mini,0.15,0.6\n",
    )

    output = prices_import(path, "--dry-run")
    prices_import(path)

    # Writes to the 5-minute cache at 1.25x the input price, reads at 0.1x: Anthropic's documented multipliers (the
    # factory's 0.15 input price had a write price of 0.1875 by the same rule).
    assert "claude-sonnet  cache_write_price_per_million: 0.1875 → 3.75" in output
    assert "claude-sonnet  cached_input_price_per_million: 0.075 → 0.3" in output
    assert in_force("claude-sonnet") == {
        "input_price_per_million": Decimal("3"),
        "cached_input_price_per_million": Decimal("0.3"),
        "output_price_per_million": Decimal("15"),
        "cache_write_price_per_million": Decimal("3.75"),
    }
    bedrock = in_force("bedrock-sonnet")
    assert (bedrock["cache_write_price_per_million"], bedrock["cached_input_price_per_million"]) == (
        Decimal("4.125"),
        Decimal("0.33"),
    )
    # Not a Claude model: its cache prices stay as they were.
    assert in_force("gpt-mini")["cache_write_price_per_million"] is None
    assert in_force("gpt-mini")["cached_input_price_per_million"] == Decimal("0.075")


def test_litellm_cache_costs_are_read_as_given_over_the_multipliers(claude_models, tmp_path):
    path = write(
        tmp_path,
        "cost_map.json",
        '{"claude-sonnet": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,'
        ' "cache_creation_input_token_cost": 6e-06, "cache_read_input_token_cost": 3e-07}}',
    )

    prices_import(path)

    sonnet = in_force("claude-sonnet")
    assert (sonnet["cache_write_price_per_million"], sonnet["cached_input_price_per_million"]) == (
        Decimal("6"),
        Decimal("0.3"),
    )


def test_a_claude_model_created_from_the_cost_map_gets_the_multipliers(claude_models, tmp_path):
    path = write(
        tmp_path,
        "cost_map.json",
        '{"claude-3-5-haiku-20241022": {"input_cost_per_token": 8e-07, "output_cost_per_token": 4e-06,'
        ' "litellm_provider": "anthropic"}}',
    )

    prices_import(path, "--create", "--provider", "anthropic-api")

    assert in_force("claude-3-5-haiku-20241022") == {
        "input_price_per_million": Decimal("0.8"),
        "cached_input_price_per_million": Decimal("0.08"),
        "output_price_per_million": Decimal("4"),
        "cache_write_price_per_million": Decimal("1"),
    }
