"""The what-if's expected change in quality: moved requests' agreement with the large model before and after, from
the routing lever's shadow results of the same days, with the interval they carry."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.finance.whatif import whatif_replay
from billing.models import Lever
from billing.quality.expectations import Move, RoutingEvidence, expected_quality, request_references
from routing.models import Model
from routing.policy.document import compile_policy
from routing.policy.engine import SCORED_ROUTE
from routing.services import tenant_model_access_set
from tests.factories import ModelFactory
from tests.finance.test_whatif import SHORT_TASKS, classification_on_large, line, make_tenant, record
from tests.quality.factories import evaluations

pytestmark = pytest.mark.django_db


def short_classification(key, count: int) -> None:
    for _ in range(count):
        record(
            key,
            task_type="classification",
            route=SHORT_TASKS,
            prompt_tokens=100,
            prompt_tokens_before_compression=100,
            completion_tokens=10,
            served_model="acme-small",
        )


def test_moving_a_rules_requests_to_the_large_model_gains_what_its_shadow_results_lost():
    tenant, key = make_tenant("acme")
    short_classification(key, 3)
    # The short-tasks rule's classifications on the small model: 45 of 50 agreed with the large model.
    evaluations(tenant, agreeing=45, disagreeing=5, rule=SHORT_TASKS, served_model="acme-small")
    # Another lever's, another rule's, an old one and another tenant's: in no estimate.
    evaluations(tenant, agreeing=0, disagreeing=9, lever=Lever.SEMANTIC_CACHE, rule=SHORT_TASKS)
    evaluations(tenant, agreeing=0, disagreeing=9, rule="enterprise-tier", served_model="acme-small")
    evaluations(
        tenant,
        agreeing=0,
        disagreeing=9,
        rule=SHORT_TASKS,
        served_model="acme-small",
        at=timezone.now() - timedelta(days=9),
    )
    other, _ = make_tenant("globex")
    evaluations(other, agreeing=0, disagreeing=50, rule=SHORT_TASKS, served_model="acme-small")

    report = whatif_replay(tenant=tenant, days=7, draft=classification_on_large(tenant))

    short, moved = line(report.rules, SHORT_TASKS), line(report.rules, "classification-on-large")
    assert short.quality == moved.quality == report.total.quality
    assert short.quality == (
        "+10.0 pts (+4.3 to +21.4): 90.0% -> 100.0% agree with the large model, on 3 requests moved"
    )
    assert report.total.quality_change == {
        "moved_requests": 3,
        "with_shadow_results": 3,
        "agreement_before": "0.9000",
        "agreement_after": "1.0000",
        "change": "0.1000",
        "change_low": "0.0434",
        "change_high": "0.2137",
        "basis": [
            "acme-large is the reference (agreement 1 by definition)",
            f"rule {SHORT_TASKS} on acme-small, task type classification: 90.0% (78.6–95.7%, n=50)",
        ],
    }
    assert report.quality_change_overall == Decimal("0.1000")


def test_evidence_falls_back_from_the_rule_to_the_model_and_task_type_to_the_model():
    tenant, _ = make_tenant("acme")
    now = timezone.now()
    evaluations(tenant, agreeing=9, disagreeing=1, rule="a", served_model="small", task_type="chat")
    evaluations(tenant, agreeing=3, disagreeing=1, rule=f"b+{SCORED_ROUTE}", served_model="small", task_type="code")
    evaluations(tenant, agreeing=1, disagreeing=1, rule="c", served_model="mid", task_type="chat")
    evidence = RoutingEvidence(tenant_id=tenant.pk, start=now - timedelta(days=1), end=now + timedelta(seconds=1))

    big = frozenset({"big"})
    by_rule = evidence.estimate(rule="a", model="small", task_type="code", references=big)
    by_scored_rule = evidence.estimate(rule="b", model="small", task_type="chat", references=big)
    by_task = evidence.estimate(rule="new", model="small", task_type="code", references=big)
    by_model = evidence.estimate(rule="new", model="small", task_type="other", references=big)
    unknown = evidence.estimate(rule="a", model="tiny", task_type="chat", references=big)

    assert (by_rule.rate, by_rule.basis.split(":")[0]) == (Decimal("0.9"), "rule a on small")
    assert (by_scored_rule.rate, by_scored_rule.basis.split(":")[0]) == (Decimal("0.75"), "rule b on small")
    assert (by_task.rate, by_task.basis.split(":")[0]) == (Decimal("0.75"), "small on task type code")
    assert (by_model.rate, by_model.basis.split(":")[0]) == (Decimal("0.8571"), "small on any task")
    assert not unknown.known and evidence.estimate(rule="a", model="big", task_type="", references=big).rate == 1


def test_moving_from_the_large_model_to_a_small_one_loses_what_the_small_one_disagrees_on():
    tenant, _ = make_tenant("acme")
    now = timezone.now()
    evaluations(tenant, agreeing=80, disagreeing=20, rule="cheap", served_model="small", task_type="chat")
    evidence = RoutingEvidence(tenant_id=tenant.pk, start=now - timedelta(days=1), end=now + timedelta(seconds=1))

    quality = expected_quality(
        moves={
            Move("vip", "big", "cheap", "small", "chat", frozenset({"big"})): 10,
            Move("cheap", "small", "vip", "big", "chat", frozenset({"big"})): 30,
        },
        evidence=evidence,
    )

    assert quality.by_live_rule["vip"].change == Decimal("-0.2000")
    assert quality.by_live_rule["cheap"].change == Decimal("0.2000")
    # 30 requests gain 0.2 and 10 lose 0.2: +0.1 on the 40 moved.
    assert (quality.total.moved, quality.total.change) == (40, Decimal("0.1000"))
    assert quality.of_rule("vip").moved == 40  # its own 10, and the 30 moved into it


def test_only_a_requests_own_reference_agrees_by_definition():
    tenant, _ = make_tenant("acme")
    now = timezone.now()
    evidence = RoutingEvidence(tenant_id=tenant.pk, start=now - timedelta(days=1), end=now + timedelta(seconds=1))
    policy = compile_policy(
        {"aliases": {"auto": {"small": "mini", "large": "gpt-4o"}, "reasoning": {"small": "mini", "large": "o3"}}}
    )

    auto, reasoning = request_references("auto", policy), request_references("reasoning", policy)
    named = request_references("gpt-4.1", policy, None)

    assert (auto, reasoning, named) == ({"gpt-4o"}, {"o3"}, {"gpt-4.1"})
    assert evidence.estimate(rule="r", model="gpt-4o", task_type="", references=auto).rate == 1
    # o3 is reasoning's large model, not auto's: an auto request it serves has no agreement by definition.
    assert not evidence.estimate(rule="r", model="o3", task_type="", references=auto).known
    assert not evidence.estimate(rule="r", model="gpt-4o", task_type="", references=named).known


def test_moving_requests_to_another_aliases_large_model_is_not_agreement_by_definition():
    tenant, key = make_tenant("acme")
    o3 = ModelFactory(name="acme-o3", output_price_per_million=Decimal("12"))
    tenant_model_access_set(
        tenant=tenant, allowed_models=[*Model.objects.filter(name__startswith="acme-")], default_model=None
    )
    short_classification(key, 3)
    evaluations(tenant, agreeing=45, disagreeing=5, rule=SHORT_TASKS, served_model="acme-small")
    draft = classification_on_large(tenant)
    draft["aliases"]["reasoning"] = {"small": "acme-small", "large": o3.name}
    next(rule for rule in draft["rules"] if rule["name"] == "classification-on-large")["outcome"]["target_model"] = (
        o3.name
    )

    report = whatif_replay(tenant=tenant, days=7, draft=draft)

    # acme-o3 is the reasoning alias's large model; these requests named auto, whose large model is acme-large.
    assert report.total.quality == "no shadow results (3 requests changing model)"
