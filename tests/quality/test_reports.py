"""Quality next to savings: agreement by lever on the KPI dashboard and in /api/usage/'s `quality` block, one tenant
at a time."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from billing.models import Lever, UsageKind, UsageRecord
from tests.finance.conftest import make_finance_tenant, usage_row
from tests.quality.factories import ShadowEvaluationFactory, evaluations

DAY = datetime(2025, 3, 3, 12, tzinfo=UTC)
RANGE = {"since": "2025-03-01", "until": "2025-03-31"}


@pytest.fixture
def tenants(db):
    acme, globex = make_finance_tenant("acme"), make_finance_tenant("globex")
    evaluations(acme.tenant, agreeing=48, disagreeing=2, lever=Lever.ROUTING, rule="short-tasks", at=DAY)
    evaluations(
        acme.tenant, agreeing=9, disagreeing=1, lever=Lever.ROUTING, rule="by-score+score", task_type="chat", at=DAY
    )
    evaluations(acme.tenant, agreeing=20, disagreeing=0, lever=Lever.SEMANTIC_CACHE, rule="short-tasks", at=DAY)
    # Before the range, and another tenant's: in no figure.
    evaluations(acme.tenant, agreeing=0, disagreeing=9, lever=Lever.ROUTING, at=DAY - timedelta(days=10))
    evaluations(globex.tenant, agreeing=0, disagreeing=40, lever=Lever.COMPRESSION, at=DAY)
    evaluation = usage_row(acme.keys[0], created_at=DAY, cost="0.0200000000", model="m-large")
    evaluation.kind = UsageKind.EVALUATION
    UsageRecord.objects.bulk_create([usage_row(acme.keys[0], created_at=DAY, cost="0.1"), evaluation])
    return acme, globex


def test_usage_api_quality_block_has_every_lever_the_groups_and_the_evaluation_spend(client, tenants):
    acme, _ = tenants
    client.force_login(acme.finance_user)

    body = client.get("/api/usage/", {**RANGE, "group_by": "day", "quality": "rule"}).json()

    quality = body["quality"]
    assert quality["group_by"] == ["lever", "rule"]
    assert [(row["lever"], row["samples"], row["agreement"]) for row in quality["by_lever"]] == [
        ("routing", 60, "0.9500"),
        ("semantic_cache", 20, "1.0000"),
        ("compression", 0, None),
        ("budget_downgrade", 0, None),
    ]
    assert quality["by_lever"][0]["lower_bound"] == "0.8629"
    assert quality["by_lever"][0]["upper_bound"] == "0.9829"
    assert [(row["lever"], row["rule"], row["agreeing"], row["samples"]) for row in quality["groups"]] == [
        ("routing", "by-score", 9, 10),
        ("routing", "short-tasks", 48, 50),
        ("semantic_cache", "short-tasks", 20, 20),
    ]
    assert quality["evaluation_spend_usd"] == "0.0200000000"
    assert [group["cost_usd"] for group in body["results"]] == ["0.1000000000"]


def test_usage_api_has_no_quality_block_unless_asked_and_refuses_an_unknown_grouping(client, tenants):
    acme, _ = tenants
    client.force_login(acme.finance_user)

    assert "quality" not in client.get("/api/usage/", RANGE).json()
    refused = client.get("/api/usage/", {**RANGE, "quality": "team"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unknown_grouping"
    assert refused.json()["error"]["field"] == "quality"


def test_usage_api_quality_of_another_tenant_is_not_found(client, tenants):
    acme, _ = tenants
    client.force_login(acme.finance_user)

    assert client.get("/api/usage/", {**RANGE, "tenant": "globex", "quality": "lever"}).status_code == 404


def test_dashboard_shows_agreement_by_lever_next_to_its_savings(client, tenants):
    acme, _ = tenants
    client.force_login(acme.finance_user)

    html = client.get(reverse("admin:billing_usage_dashboard"), RANGE).content.decode()

    routing_row = re.search(r'<tr id="saved-routing">.*?</tr>', html, re.DOTALL).group(0)
    assert 'id="agreement-routing"' in routing_row
    assert "95.0% (86.2–98.3%, n=60)" in routing_row
    assert 'id="agreement-budget_downgrade"' in routing_row and "no shadow results" in routing_row
    cache_row = re.search(r'<tr id="saved-cache">.*?</tr>', html, re.DOTALL).group(0)
    assert "100.0% (83.8–100.0%, n=20)" in cache_row
    assert "not evaluated" in re.search(r'<tr id="saved-batch">.*?</tr>', html, re.DOTALL).group(0)
    groups = re.search(r'<div class="panel wide" id="quality-groups">.*?</table>', html, re.DOTALL).group(0)
    assert groups.index("by-score") < groups.index("short-tasks")  # the lowest upper bound first
    assert "globex" not in html and "n=40" not in html


def test_agreement_on_the_dashboard_reads_only_the_days_shown(client, tenants):
    acme, _ = tenants
    client.force_login(acme.finance_user)

    html = client.get(reverse("admin:billing_usage_dashboard"), {"since": "2025-02-20", "until": "2025-02-25"})

    assert "0.0% (0.0–30.0%, n=9)" in html.content.decode()


def test_a_rules_routes_are_one_group_in_the_api_and_on_the_dashboard(client, tenants):
    acme, _ = tenants
    for route in ("by-score+budget-downgrade", "by-score", "score", "direct"):
        evaluations(acme.tenant, agreeing=1, disagreeing=1, lever=Lever.ROUTING, rule=route, task_type="chat", at=DAY)
    client.force_login(acme.finance_user)

    groups = client.get("/api/usage/", {**RANGE, "quality": "rule"}).json()["quality"]["groups"]
    html = client.get(reverse("admin:billing_usage_dashboard"), RANGE).content.decode()

    assert [(row["rule"], row["agreeing"], row["samples"]) for row in groups if row["lever"] == "routing"] == [
        ("", 2, 4),  # no rule: the score alone, or the model kept
        ("by-score", 9 + 2, 10 + 4),
        ("short-tasks", 48, 50),
    ]
    table = re.search(r'<div class="panel wide" id="quality-groups">.*?</table>', html, re.DOTALL).group(0)
    assert "+score" not in table and "+budget-downgrade" not in table
    assert table.count("<td>by-score</td>") == 1


def test_usage_api_quality_block_honours_the_pages_filters(client, tenants):
    acme, _ = tenants
    search, support = acme.keys
    requests = [usage_row(key, created_at=DAY, cost="0.1") for key in (search, support, support)]
    requests[2].customer = "cust-7"
    calls = []
    for request in requests:
        call = usage_row(request.api_key, created_at=DAY, cost="0.0300000000", model="m-large")
        call.kind, call.parent_request_id, call.customer = UsageKind.EVALUATION, request.request_id, request.customer
        calls.append(call)
    UsageRecord.objects.bulk_create(requests + calls)
    for request, agrees in zip(requests, (True, False, False), strict=True):
        ShadowEvaluationFactory(
            tenant=acme.tenant, request_id=request.request_id, lever=Lever.COMPRESSION, agrees=agrees, created_at=DAY
        )
    client.force_login(acme.finance_user)

    def quality(**filters) -> dict:
        body = client.get("/api/usage/", {**RANGE, "quality": "lever", **filters}).json()
        compression = next(row for row in body["quality"]["by_lever"] if row["lever"] == "compression")
        return {"samples": compression["samples"], "agreeing": compression["agreeing"]}, body["quality"][
            "evaluation_spend_usd"
        ]

    assert quality() == ({"samples": 3, "agreeing": 1}, "0.1100000000")  # and the fixture's call, of no request
    assert quality(team=acme.teams[0].slug) == ({"samples": 1, "agreeing": 1}, "0.0300000000")
    assert quality(key=support.prefix) == ({"samples": 2, "agreeing": 0}, "0.0600000000")
    assert quality(customer="cust-7") == ({"samples": 1, "agreeing": 0}, "0.0300000000")
    assert quality(model="m-large") == ({"samples": 0, "agreeing": 0}, "0.0000000000")
