from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import Budget, BudgetScope, UsageRecord


def budget_set(*args) -> str:
    out = StringIO()
    call_command("budget_set", *args, stdout=out)
    return out.getvalue()


def test_creates_then_updates_a_team_budget_and_prints_its_spend(org):
    UsageRecord.objects.create(
        request_id="r1",
        tenant=org.tenant,
        team=org.team,
        api_key=org.api_key,
        cost_usd=Decimal("1.2500000000"),
        http_status=200,
        created_at=timezone.now() - timedelta(seconds=5),
    )
    output = budget_set("--tenant", "acme", "--team", "acme-support", "--period", "month", "--limit-usd", "20")
    budget = Budget.objects.unscoped().get()
    assert (budget.scope, budget.team, budget.limit_usd, budget.action) == (BudgetScope.TEAM, org.team, 20, "block")
    assert budget.thresholds == [50, 80, 100]
    assert output.startswith(f"Created budget {budget.pk}: acme team acme-support, month limit $20.0000000000")
    assert "spent $1.2500000000, reserved $0.0000000000 by requests in flight, remaining $18.7500000000" in output

    output = budget_set(
        "--tenant", "acme", "--team", "acme-support", "--period", "month", "--limit-usd", "30",
        "--action", "notify", "--thresholds", "75,100",
    )  # fmt: skip
    budget.refresh_from_db()
    assert Budget.objects.unscoped().count() == 1
    assert (budget.limit_usd, budget.action, budget.thresholds) == (30, "notify", [75, 100])
    assert output.startswith("Updated budget")


def test_key_and_model_budgets(org):
    budget_set("--tenant", "acme", "--key", org.api_key.prefix, "--period", "day", "--limit-usd", "1.5")
    budget_set("--tenant", "acme", "--model", "m-large", "--period", "week", "--limit-usd", "3")
    scopes = set(Budget.objects.unscoped().values_list("scope", "period"))
    assert scopes == {(BudgetScope.KEY, "day"), (BudgetScope.TENANT_MODEL, "week")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit-usd", "0"], "more than 0"),
        (["--limit-usd", "-5"], "more than 0"),
        (["--limit-usd", "abc"], "not a number"),
        (["--limit-usd", "NaN"], "more than 0"),
        (["--limit-usd", "sNaN"], "more than 0"),
        (["--limit-usd", "Infinity"], "more than 0"),
        (["--limit-usd=-Infinity"], "more than 0"),
        (["--limit-usd", "5", "--thresholds", "80,50"], "increasing order"),
        (["--limit-usd", "5", "--thresholds", "50,120"], "from 1 to 100"),
        (["--limit-usd", "5", "--thresholds", "half"], "whole percentages"),
        (["--limit-usd", "5", "--team", "nope"], "no team 'nope'"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(org, args, message):
    with pytest.raises(CommandError, match=message):
        budget_set("--tenant", "acme", "--period", "month", *args)
    assert not Budget.objects.unscoped().exists()


def test_downgrade_without_a_cheaper_route_is_refused(org):
    with pytest.raises(CommandError, match="cheaper route"):
        budget_set(
            "--tenant", "acme", "--period", "day", "--limit-usd", "5", "--action", "downgrade", "--model", "acme-small"
        )
    assert not Budget.objects.unscoped().exists()


def test_downgrade_with_a_cheaper_route_is_accepted(org):
    budget_set("--tenant", "acme", "--period", "day", "--limit-usd", "5", "--action", "downgrade")

    assert Budget.objects.unscoped().get().action == "downgrade"


def test_unknown_tenant(org):
    with pytest.raises(CommandError, match="no tenant"):
        budget_set("--tenant", "nope", "--period", "month", "--limit-usd", "5")
