"""End to end: requests through the live gateway leave the routing features in the ledger and, with payload logging
on, their bodies; the what-if replays them under the live version exactly as they were routed."""

import copy

import httpx
import pytest

from billing.finance.whatif import whatif_replay
from billing.models import UsageRecord
from routing.services import routing_policy_create_default
from tenants.models import PayloadLog
from tenants.services import payload_log_settings_set

pytestmark = pytest.mark.live

HARD = "First def solve(x): return x. Then prove the theorem step by step, and derive the integral."
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def chat(gateway, setup, body, headers=None):
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {setup.key}", **(headers or {})},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def user(text):
    return [{"role": "user", "content": text}]


def test_the_ledger_keeps_what_routing_read_and_the_replay_routes_it_again(gateway, acme):
    policy = routing_policy_create_default(tenant=acme.tenant, small_model=acme.small, large_model=acme.large)
    payload_log_settings_set(tenant=acme.tenant, enabled=True)
    chat(
        gateway,
        acme,
        {"model": "auto", "messages": user("Classify: refund"), "metadata": {"task_type": "classification"}},
    )
    # The task type comes in a header, which the payload log does not keep; the ledger does.
    chat(gateway, acme, {"model": "auto", "messages": user("Summarise this")}, {"x-llmops-task-type": "summarization"})
    chat(gateway, acme, {"model": "auto", "messages": user(HARD), "tools": TOOLS}, {"x-llmops-user-tier": "pro"})

    rows = {row.route: row for row in UsageRecord.objects.for_tenant(acme.tenant)}
    scored = rows["otherwise-by-difficulty+score"]
    assert (scored.task_type, scored.user_tier, scored.has_tools, scored.has_images) == ("", "pro", True, False)
    assert scored.difficulty_score >= 50 and scored.routed_to_large
    short = UsageRecord.objects.for_tenant(acme.tenant).filter(route="short-classification-and-summaries")
    assert sorted(short.values_list("task_type", flat=True)) == ["classification", "summarization"]
    assert PayloadLog.objects.for_tenant(acme.tenant).count() == 3

    draft = copy.deepcopy(policy.live_version.document)
    short_rule = next(rule for rule in draft["rules"] if rule["name"] == "short-classification-and-summaries")
    short_rule["outcome"]["target_model"] = acme.large.name
    report = whatif_replay(tenant=acme.tenant, days=1, draft=draft)

    assert (report.replayed, report.from_payloads, report.undecided_requests) == (3, 3, 0)
    lines = {line.label: line for line in report.rules}
    assert (
        lines["short-classification-and-summaries"].live_requests,
        lines["otherwise-by-difficulty"].live_requests,
    ) == (2, 1)
    models = {line.label: line for line in report.models}
    assert (models[acme.small.name].live_requests, models[acme.large.name].live_requests) == (2, 1)
    assert models[acme.large.name].draft_requests == 3
    # Under the live version each request costs what the ledger charged it: the prices have not changed.
    assert report.total.live_cost_usd == report.recorded_cost_usd
    assert report.total.difference_usd > 0
