"""A quality SLO's automatic actions on a policy: sending a rule's requests to the large model, turning its semantic
cache off, refusing instead of compressing; published by the system with a note, the draft following only when it
said what the live policy said."""

from dataclasses import astuple

import pytest
from django.core.exceptions import ValidationError

from routing.catalog import ModelCatalog, build_model_catalog
from routing.models import RoutingPolicyAudit, RoutingRule
from routing.policy import RouteRequest, route_request
from routing.policy.document import compile_policy, normalized_document
from routing.policy.drafts import policy_draft_document
from routing.policy.quality_actions import compression_off, routes_to_large, semantic_cache_off
from routing.services import (
    BY_DIFFICULTY_RULE,
    DRAFT_LEFT_NOTE,
    SHORT_TASKS_RULE,
    default_policy_document,
    routing_policy_create_default,
    routing_policy_quality_action,
    tenant_model_access_set,
)
from tenants.audit import audit_actor
from tenants.models import AuditEvent

DEFAULT = default_policy_document(small_model="s", large_model="l")
CATALOG = ModelCatalog(models={}, access_by_tenant={})


def rule(document: dict, name: str) -> dict:
    return next(candidate for candidate in document["rules"] if candidate["name"] == name)


def test_a_rule_on_the_small_model_moves_to_the_large_one_which_falls_back_to_small():
    document, changes, not_done = astuple(routes_to_large(DEFAULT, SHORT_TASKS_RULE))

    assert rule(document, SHORT_TASKS_RULE)["outcome"]["target_model"] == "l"
    assert rule(document, SHORT_TASKS_RULE)["outcome"]["fallback_models"] == ["s"]
    assert changes == [f"rule {SHORT_TASKS_RULE}: target s -> l"]
    assert not_done == []
    assert document["auto_threshold"] == DEFAULT["auto_threshold"]
    assert {candidate["name"] for candidate in document["rules"] if candidate != rule(DEFAULT, candidate["name"])} == {
        SHORT_TASKS_RULE
    }


def test_a_score_routed_rule_of_one_alias_targets_its_large_model():
    document, changes, _ = astuple(routes_to_large(DEFAULT, BY_DIFFICULTY_RULE))

    assert rule(document, BY_DIFFICULTY_RULE)["outcome"]["target_model"] == "l"
    assert changes == [f"rule {BY_DIFFICULTY_RULE}: target l (auto's large, not the score)"]


TWO_ALIASES = normalized_document(
    {
        "aliases": {"auto": {"small": "mini", "large": "gpt-4o"}, "reasoning": {"small": "mini", "large": "o3"}},
        "rules": [
            {
                "priority": 10,
                "name": "short",
                "match": {"requested_models": ["auto"]},
                "outcome": {"target_model": "mini"},
            },
            {"priority": 20, "name": "think", "match": {"requested_models": ["reasoning"]}},
            {
                "priority": 30,
                "name": "both",
                "match": {"requested_models": ["auto", "reasoning"]},
                "outcome": {"target_model": "mini"},
            },
        ],
    }
)


def test_with_two_aliases_a_rule_targets_the_large_model_of_its_own_alias():
    short, short_changes, _ = astuple(routes_to_large(TWO_ALIASES, "short"))
    think, think_changes, _ = astuple(routes_to_large(TWO_ALIASES, "think"))

    assert (rule(short, "short")["outcome"]["target_model"], short_changes) == (
        "gpt-4o",
        ["rule short: target mini -> gpt-4o"],
    )
    assert rule(think, "think")["outcome"]["target_model"] == "o3"
    assert think_changes == ["rule think: target o3 (reasoning's large, not the score)"]
    assert short["auto_threshold"] == think["auto_threshold"] == 50


def test_a_rule_of_two_aliases_follows_its_evaluations_reference_or_says_why_it_cannot():
    judged, changes, _ = astuple(routes_to_large(TWO_ALIASES, "both", references={"both": frozenset({"o3"})}))
    assert rule(judged, "both")["outcome"]["target_model"] == "o3"
    assert changes == ["rule both: target mini -> o3 (the model its evaluations were judged against)"]

    mixed = routes_to_large(TWO_ALIASES, "both", references={"both": frozenset({"o3", "gpt-4o"})})
    assert mixed.changes == [] and mixed.document == TWO_ALIASES
    assert mixed.not_done == [
        "rule both: it serves requests of several aliases or models, and its evaluations were judged against several "
        "models (gpt-4o, o3): no one target is right for all of them: not done"
    ]


NAMED = normalized_document(
    {
        "aliases": {"auto": {"small": "s", "large": "l"}},
        "rules": [
            {
                "priority": 10,
                "name": "cheaper-4o",
                "match": {"requested_models": ["gpt-4o"]},
                "outcome": {"target_model": "gpt-4o-mini", "fallback_models": ["gpt-4o-mini", "s"]},
            },
            {"priority": 20, "name": "keep-4o", "match": {"requested_models": ["gpt-4o"]}},
        ],
    }
)


def test_a_rule_that_downgrades_a_named_model_drops_its_target_so_requests_keep_their_model():
    document, changes, not_done = astuple(routes_to_large(NAMED, "cheaper-4o"))

    outcome = rule(document, "cheaper-4o")["outcome"]
    assert (outcome["target_model"], outcome["fallback_models"]) == ("", ["s", "gpt-4o-mini"])
    assert changes == [
        "rule cheaper-4o: target gpt-4o-mini dropped: each request keeps the model it names, or gets its alias's by "
        "score (gpt-4o-mini now the last fallback)"
    ]
    assert not_done == []
    decision = route_request(
        compile_policy(document), RouteRequest(tenant_id=1, requested_model="gpt-4o", prompt_tokens=50), CATALOG
    )
    assert decision.outcome.target_model == "gpt-4o"
    assert routes_to_large(NAMED, "keep-4o").not_done == ["rule keep-4o: its requests already keep the model they name"]


def test_a_catch_all_by_score_is_not_done_and_the_threshold_stays():
    document, changes, not_done = astuple(
        routes_to_large(DEFAULT, "prompt-cap", references={"prompt-cap": frozenset({"l"})})
    )

    assert document == DEFAULT and changes == []
    assert not_done[0].startswith("rule prompt-cap: the difficulty score picks for its requests of several aliases")


def test_a_catch_all_with_a_target_takes_the_model_its_evaluations_were_judged_against():
    catch_all = normalized_document(
        {
            "aliases": {"auto": {"small": "s", "large": "l"}},
            "rules": [{"priority": 10, "name": "everything", "outcome": {"target_model": "s"}}],
        }
    )

    document, changes, _ = astuple(
        routes_to_large(catch_all, "everything", references={"everything": frozenset({"l"})})
    )
    unjudged = routes_to_large(catch_all, "everything")

    assert rule(document, "everything")["outcome"]["target_model"] == "l" and document["auto_threshold"] == 50
    assert changes == ["rule everything: target s -> l (the model its evaluations were judged against)"]
    assert unjudged.changes == [] and "judged against no model in the window" in unjudged.not_done[0]


def test_a_whole_lever_sends_every_rule_to_its_reference_and_every_scored_request_large():
    document, changes, not_done = astuple(routes_to_large(DEFAULT, ""))

    assert rule(document, SHORT_TASKS_RULE)["outcome"]["target_model"] == "l"
    assert rule(document, BY_DIFFICULTY_RULE)["outcome"]["target_model"] == "l"
    assert rule(document, "prompt-cap")["outcome"]["target_model"] == ""
    assert document["auto_threshold"] == 0
    assert len(changes) == 3 and not_done == []

    two, _, _ = astuple(routes_to_large(TWO_ALIASES, ""))
    # No one target fits `both`: it loses its cheap one, and the score at 0 sends each alias to its own large model.
    assert [candidate["outcome"]["target_model"] for candidate in two["rules"]] == ["gpt-4o", "o3", ""]
    assert two["auto_threshold"] == 0


def test_a_rule_already_on_the_large_model_needs_no_change_and_says_so():
    assert routes_to_large(DEFAULT, "enterprise-tier").not_done == [
        "rule enterprise-tier: it already targets l, the large model of auto"
    ]
    assert routes_to_large(DEFAULT, "no-such-rule").not_done == ["no rule 'no-such-rule' in the live policy"]
    assert routes_to_large(DEFAULT, "enterprise-tier").changes == []


def test_semantic_cache_and_compression_turn_off_for_the_rule_only():
    no_semantic, changes, _ = astuple(semantic_cache_off(DEFAULT, SHORT_TASKS_RULE))
    assert [candidate["outcome"]["semantic_cache"] for candidate in no_semantic["rules"]] == [
        candidate["name"] != SHORT_TASKS_RULE for candidate in no_semantic["rules"]
    ]
    assert changes == [f"rule {SHORT_TASKS_RULE}: semantic cache off"]
    assert semantic_cache_off(no_semantic, SHORT_TASKS_RULE).not_done == [
        f"rule {SHORT_TASKS_RULE}: its semantic cache is already off"
    ]

    rejecting, changes, _ = astuple(compression_off(DEFAULT, ""))
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


def test_the_action_publishes_as_the_system_with_a_note_and_the_draft_that_was_the_live_policy_follows(
    acme_routing, live_default
):
    draft_ids = set(RoutingRule.objects.for_tenant(acme_routing.tenant).values_list("pk", flat=True))

    with audit_actor(name="quality SLO 7"):
        result = routing_policy_quality_action(
            tenant=acme_routing.tenant, transform=routes_to_large, rule=SHORT_TASKS_RULE, note="quality SLO 7 breached"
        )
    version = result.version

    assert version.number == 2 and version.published_by is None
    assert result.changes == [f"rule {SHORT_TASKS_RULE}: target acme-small -> acme-large"]
    assert not result.draft_left
    audit = RoutingPolicyAudit.objects.for_tenant(acme_routing.tenant).get(version=version)
    assert (audit.actor, audit.note) == (None, "quality SLO 7 breached")
    assert audit.diff["rules_changed"][SHORT_TASKS_RULE]["target_model"] == ["acme-small", "acme-large"]
    assert policy_draft_document(policy=live_default) == version.document
    assert set(RoutingRule.objects.for_tenant(acme_routing.tenant).values_list("pk", flat=True)) != draft_ids
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


def test_a_draft_with_edits_of_its_own_is_left_alone_and_the_note_says_so(acme_routing, live_default):
    RoutingRule.objects.for_tenant(acme_routing.tenant).filter(name=SHORT_TASKS_RULE).update(name="short-renamed")
    draft_before = {
        (row.pk, row.name, row.target_model_id) for row in RoutingRule.objects.for_tenant(acme_routing.tenant)
    }

    result = routing_policy_quality_action(
        tenant=acme_routing.tenant, transform=routes_to_large, rule=SHORT_TASKS_RULE, note="quality SLO 7 breached"
    )

    assert result.version.number == 2 and result.draft_left
    assert rule(result.version.document, SHORT_TASKS_RULE)["outcome"]["target_model"] == "acme-large"
    draft_after = {
        (row.pk, row.name, row.target_model_id) for row in RoutingRule.objects.for_tenant(acme_routing.tenant)
    }
    assert draft_after == draft_before
    audit = RoutingPolicyAudit.objects.for_tenant(acme_routing.tenant).get(version=result.version)
    assert audit.note == f"quality SLO 7 breached. {DRAFT_LEFT_NOTE}"


def test_nothing_to_change_publishes_nothing(acme_routing, live_default):
    result = routing_policy_quality_action(
        tenant=acme_routing.tenant, transform=routes_to_large, rule="enterprise-tier", note="n"
    )

    assert (result.version, result.changes) == (None, [])
    assert result.not_done == ["rule enterprise-tier: it already targets acme-large, the large model of auto"]
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
