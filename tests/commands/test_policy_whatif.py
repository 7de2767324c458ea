"""`manage.py policy_whatif`: the demo's draft that moves summaries to the large model costs more, by rule and in
total; the table and the JSON say so, and bad input is refused with a clear message."""

import json
from collections import Counter
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from billing.models import UsageRecord
from routing.policy.engine import SCORED_ROUTE
from routing.services import routing_policy_create_default, tenant_model_access_set
from tests.factories import ModelFactory, TenantFactory
from tests.servers import ROOT

pytestmark = pytest.mark.django_db

DEMO_DRAFT = ROOT / "docs" / "policies" / "demo-summaries-on-large.json"


def whatif(*args: str) -> str:
    stdout = StringIO()
    call_command("policy_whatif", *args, stdout=stdout)
    return stdout.getvalue()


@pytest.fixture
def demo(settings, tmp_path):
    settings.LLMOPS_DEMO_DIR = tmp_path / "var"
    call_command("seed_demo", "--upstream-url", "http://127.0.0.1:9/v1", stdout=StringIO())


@pytest.fixture
def demo_without_history():
    """The demo's tenant, models and policy, without the weeks of history seed_demo writes."""
    tenant = TenantFactory(slug="demo")
    small, large = ModelFactory(name="mock-small"), ModelFactory(name="mock-large")
    tenant_model_access_set(tenant=tenant, allowed_models=[small, large], default_model=small)
    routing_policy_create_default(tenant=tenant, small_model=small, large_model=large)


def test_on_the_demo_moving_summaries_to_the_large_model_costs_more(demo):
    report = json.loads(whatif("--tenant", "demo", "--days", "30", "--draft", str(DEMO_DRAFT), "--format", "json"))

    rules = {line["label"]: line for line in report["rules"]}
    moved = rules["summaries-on-large"]
    assert moved["live_requests"] == 0 and moved["draft_requests"] > 0
    # The summaries leave the small model for the reference: the short-tasks rule's shadow results on summaries say
    # how many of their answers disagreed with the large model's, all of which now agree.
    change = moved["expected_quality_change"]
    assert change["moved_requests"] == change["with_shadow_results"] == moved["draft_requests"]
    assert Decimal(change["agreement_before"]) < 1 and change["agreement_after"] == "1.0000"
    assert Decimal(change["change_low"]) <= Decimal(change["change"]) <= Decimal(change["change_high"])
    assert Decimal(change["change"]) > 0
    assert change["basis"] == [
        "mock-large is the reference (agreement 1 by definition)",
        next(
            item for item in change["basis"] if item.startswith("rule short-classification-and-summaries on mock-small")
        ),
    ]
    assert rules["enterprise-tier"]["quality"] == "same model: no change"
    assert Decimal(report["quality_change_over_decided_requests"]) > 0
    assert rules["short-classification-and-summaries"]["draft_requests"] == 0
    assert (
        rules["short-classification"]["draft_requests"] + moved["draft_requests"]
        == (rules["short-classification-and-summaries"]["live_requests"])
    )
    assert report["requests"]["undecided"] == 0
    total = report["total"]
    assert float(total["difference_usd"]) > 0 and float(total["difference_pct"]) > 0
    # Only the short tasks moved: the other rules' requests cost the same under both.
    assert Decimal(total["difference_usd"]) == sum(Decimal(line["difference_usd"]) for line in rules.values())
    assert {label for label, line in rules.items() if Decimal(line["difference_usd"])} == {
        "short-classification-and-summaries",
        "short-classification",
        "summaries-on-large",
    }
    # Under the live version the replay routes each seeded request by the rule its ledger row names.
    recorded = Counter(
        route.removesuffix(f"+{SCORED_ROUTE}")
        for route in UsageRecord.objects.unscoped().filter(kind="request").values_list("route", flat=True)
    )
    assert {label: line["live_requests"] for label, line in rules.items() if line["live_requests"]} == dict(recorded)
    assert report["recorded_cost_usd"] == total["live_cost_usd"]


def test_the_table_prints_requests_and_cost_per_rule_and_the_difference(demo):
    output = whatif("--tenant", "demo", "--days", "30", "--draft", str(DEMO_DRAFT))

    assert f"What if tenant demo published {DEMO_DRAFT}?" in output
    assert "from their payload log" in output and "from ledger features only" in output
    assert "A ledger-only replay cannot see: the last user message" in output
    summaries = next(line for line in output.splitlines() if line.startswith("summaries-on-large"))
    assert summaries.split()[1] == "0" and "+$" in summaries and "pts" in summaries
    assert "-> 100.0% agree with the large model" in summaries
    difference = next(line for line in output.splitlines() if line.startswith("Difference, draft minus live"))
    assert ": +$" in difference
    quality = next(line for line in output.splitlines() if line.startswith("Expected quality change"))
    assert quality.startswith("Expected quality change, draft minus live (answers agreeing with the large model's")
    assert "pts" in quality and "decided requests +" in quality
    assert "  mock-large is the reference (agreement 1 by definition)" in output.splitlines()


def test_the_current_draft_of_the_demo_is_its_live_version_so_nothing_changes(demo):
    report = json.loads(whatif("--tenant", "demo", "--days", "7", "--format", "json"))

    assert report["draft"] == "the current draft" and report["live_version"] == 1
    assert report["total"]["difference_usd"] == "0.0000000000"
    assert report["total"]["live_requests"] == report["requests"]["replayed"] > 0


def test_an_unknown_tenant_is_refused():
    with pytest.raises(CommandError, match="no tenant with slug 'nobody'"):
        whatif("--tenant", "nobody")


def test_a_tenant_without_a_policy_has_no_draft():
    TenantFactory(slug="bare")
    with pytest.raises(CommandError, match="cannot replay: tenant 'bare' has no routing policy"):
        whatif("--tenant", "bare")


@pytest.mark.parametrize("days", ["0", "91"])
def test_a_window_out_of_range_is_refused(demo_without_history, days):
    with pytest.raises(CommandError, match=f"the window must be 1 to 90 days, not {days}"):
        whatif("--tenant", "demo", "--days", days)


def test_a_draft_file_that_is_missing_not_json_or_not_publishable_is_refused(demo_without_history, tmp_path: Path):
    not_json, unpublishable = tmp_path / "draft.txt", tmp_path / "draft.json"
    not_json.write_text("{rules: nope")
    document = json.loads(DEMO_DRAFT.read_text())
    document["aliases"]["auto"]["large"] = "gpt-9"
    unpublishable.write_text(json.dumps(document))

    with pytest.raises(CommandError, match="cannot read the draft file"):
        whatif("--tenant", "demo", "--draft", str(tmp_path / "missing.json"))
    with pytest.raises(CommandError, match="is not JSON"):
        whatif("--tenant", "demo", "--draft", str(not_json))
    with pytest.raises(CommandError, match="alias 'auto': the large model 'gpt-9' is not allowed for this tenant"):
        whatif("--tenant", "demo", "--draft", str(unpublishable))
