"""A quality SLO's automatic actions on a policy: sending a rule's requests to the large model, turning its semantic
cache off, refusing instead of compressing; published by the system with a note, and kept in the draft."""

import pytest
from django.core.exceptions import ValidationError

from routing.catalog import build_model_catalog
from routing.models import RoutingPolicyAudit, RoutingRule
from routing.policy import RouteRequest, route_request
from routing.policy.document import compile_policy, normalized_document
from routing.policy.quality_actions import compression_off, routes_to_large, semantic_cache_off
from routing.services import (
    BY_DIFFICULTY_RULE,
    SHORT_TASKS_RULE,
    default_policy_document,
    routing_policy_create_default,
    routing_policy_quality_action,
    tenant_model_access_set,
)
from tenants.audit import audit_actor
from tenants.models import AuditEvent

DEFAULT = default_policy_document(small_model="s", large_model="l")


def rule(document: dict, name: str) -> dict:
    return next(candidate for candidate in document["rules"] if candidate["name"] == name)


def test_a_rule_on_the_small_model_moves_to_the_large_one_which_falls_back_to_small():
    document, changes = routes_to_large(DEFAULT, SHORT_TASKS_RULE)

    assert rule(document, SHORT_TASKS_RULE)["outcome"]["target_model"] == "l"
    assert rule(document, SHORT_TASKS_RULE)["outcome"]["fallback_models"] == ["s"]
    assert changes == [f"rule {SHORT_TASKS_RULE}: target s -> l"]
    assert document["auto_threshold"] == DEFAULT["auto_threshold"]
    assert {candidate["name"] for candidate in document["rules"] if candidate != rule(DEFAULT, candidate["name"])} == {
        SHORT_TASKS_RULE
    }


def test_a_score_routed_rule_of_one_alias_targets_its_large_model():
    document, changes = routes_to_large(DEFAULT, BY_DIFFICULTY_RULE)

    assert rule(document, BY_DIFFICULTY_RULE)["outcome"]["target_model"] == "l"
    assert changes == [f"rule {BY_DIFFICULTY_RULE}: target l (auto's large), not the score"]


def test_a_score_routed_rule_of_any_model_lowers_the_threshold_to_zero():
    document, changes = routes_to_large(DEFAULT, "prompt-cap")

    assert document["auto_threshold"] == 0
    assert rule(document, "prompt-cap")["outcome"]["target_model"] == ""
    assert changes == ["auto_threshold 50 -> 0: every scored request goes large"]


def test_a_whole_lever_moves_every_small_rule_and_every_scored_request():
    document, changes = routes_to_large(DEFAULT, "")

    assert rule(document, SHORT_TASKS_RULE)["outcome"]["target_model"] == "l"
    assert rule(document, BY_DIFFICULTY_RULE)["outcome"]["target_model"] == "l"
    assert document["auto_threshold"] == 0
    assert len(changes) == 3


def test_a_rule_already_on_the_large_model_needs_no_change():
    assert routes_to_large(DEFAULT, "enterprise-tier")[1] == []
    assert routes_to_large(DEFAULT, "no-such-rule")[1] == []


def test_semantic_cache_and_compression_turn_off_for_the_rule_only():
    no_semantic, changes = semantic_cache_off(DEFAULT, SHORT_TASKS_RULE)
    assert [candidate["outcome"]["semantic_cache"] for candidate in no_semantic["rules"]] == [
        candidate["name"] != SHORT_TASKS_RULE for candidate in no_semantic["rules"]
    ]
    assert changes == [f"rule {SHORT_TASKS_RULE}: semantic cache off"]
    assert semantic_cache_off(no_semantic, SHORT_TASKS_RULE)[1] == []

    rejecting, changes = compression_off(DEFAULT, "")
    assert {candidate["outcome"]["over_cap_action"] for candidate in rejecting["rules"]} == {"reject"}
    assert len(changes) == 4  # every rule but too-long-to-compress, which rejected already


def test_a_document_from_before_the_semantic_cache_flag_keeps_it_on():
    old = normalized_document({"rules": [{"priority": 1, "name": "r", "outcome": {"cache_ttl_seconds": 60}}]})
    del old["rules"][0]["outcome"]["semantic_cache"]

    assert compile_policy(old).rules[0].outcome.semantic_cache is True


@pytest.fixture
def live_default(acme_routing):
    return routing_policy_create_default(
        tenant=acme_routing.tenant, small_model=acme_routing.small, large_model=acme_routing.large
    )


def test_the_action_publishes_as_the_system_with_a_note_and_keeps_the_drafts_other_edits(acme_routing, live_default):
    RoutingRule.objects.for_tenant(acme_routing.tenant).filter(name="enterprise-tier").update(priority=25)

    with audit_actor(name="quality SLO 7"):
        version, changes = routing_policy_quality_action(
            tenant=acme_routing.tenant, transform=routes_to_large, rule=SHORT_TASKS_RULE, note="quality SLO 7 breached"
        )

    assert version.number == 2 and version.published_by is None
    assert changes == [f"rule {SHORT_TASKS_RULE}: target acme-small -> acme-large"]
    audit = RoutingPolicyAudit.objects.for_tenant(acme_routing.tenant).get(version=version)
    assert (audit.actor, audit.note) == (None, "quality SLO 7 breached")
    assert audit.diff["rules_changed"][SHORT_TASKS_RULE]["target_model"] == ["acme-small", "acme-large"]
    draft = {row.name: row for row in RoutingRule.objects.for_tenant(acme_routing.tenant)}
    assert draft[SHORT_TASKS_RULE].target_model == acme_routing.large
    assert draft["enterprise-tier"].priority == 25
    events = AuditEvent.objects.for_tenant(acme_routing.tenant).filter(
        object_type="routing.routingpolicyversion", object_id=str(version.pk)
    )
    assert list(events.values_list("actor_name", flat=True)) == ["quality SLO 7"]
    decision = route_request(
        compile_policy(version.document, version=version.number),
        RouteRequest(
            tenant_id=acme_routing.tenant.pk, requested_model="auto", prompt_tokens=50, task_type="summarization"
        ),
        build_model_catalog(tenant_id=acme_routing.tenant.pk),
    )
    assert decision.outcome.target_model == "acme-large"


def test_nothing_to_change_publishes_nothing(acme_routing, live_default):
    version, changes = routing_policy_quality_action(
        tenant=acme_routing.tenant, transform=routes_to_large, rule="enterprise-tier", note="n"
    )

    assert (version, changes) == (None, [])
    assert RoutingPolicyAudit.objects.for_tenant(acme_routing.tenant).count() == 1


def test_a_change_that_could_not_be_published_is_refused_with_the_reason(acme_routing, live_default):
    tenant_model_access_set(tenant=acme_routing.tenant, allowed_models=[acme_routing.small], default_model=None)

    with pytest.raises(ValidationError, match="acme-large"):
        routing_policy_quality_action(
            tenant=acme_routing.tenant, transform=routes_to_large, rule=SHORT_TASKS_RULE, note="n"
        )


def test_a_document_from_a_later_release_with_an_outcome_key_unknown_here_compiles():
    later = normalized_document({"rules": [{"priority": 1, "name": "r", "outcome": {"target_model": "s"}}]})
    later["rules"][0]["outcome"]["a_later_flag"] = True

    assert compile_policy(later).rules[0].outcome.target_model == "s"
