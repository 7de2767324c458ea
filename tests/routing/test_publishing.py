"""Publishing, refusals that name the rule, rollback, audit diffs and the default template."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from routing.catalog import build_model_catalog
from routing.models import RoutingAlias, RoutingPolicyAudit, RoutingRule
from routing.policy import RouteRequest, build_live_policies, route_request
from routing.policy.document import compile_policy
from routing.prices import model_price_set
from routing.services import (
    routing_policy_create,
    routing_policy_create_default,
    routing_policy_ensure_default,
    routing_policy_publish,
    routing_policy_rollback,
)
from tests.factories import ModelFactory, UserFactory


@pytest.fixture
def draft(acme_routing):
    policy = routing_policy_create(tenant=acme_routing.tenant)
    RoutingAlias.objects.create(
        policy=policy, name="auto", small_model=acme_routing.small, large_model=acme_routing.large
    )
    RoutingRule.objects.create(
        policy=policy, priority=10, name="vip", user_tiers="enterprise", target_model=acme_routing.large
    )
    return policy


def refusal(policy) -> str:
    with pytest.raises(ValidationError) as refused:
        routing_policy_publish(policy=policy, actor=None)
    return "; ".join(refused.value.messages)


def test_publish_makes_a_numbered_live_version_with_an_audit_row(draft):
    actor = UserFactory()
    version = routing_policy_publish(policy=draft, actor=actor)
    draft.refresh_from_db()
    assert (version.number, version.published_by, draft.live_version) == (1, actor, version)
    assert version.document["rules"][0]["outcome"]["target_model"] == "acme-large"
    audit = RoutingPolicyAudit.objects.unscoped().get()
    assert (audit.action, audit.actor, audit.version, audit.previous_version) == ("publish", actor, version, None)
    assert audit.diff["rules_added"] == ["vip"]


def test_published_versions_cannot_be_changed(draft):
    version = routing_policy_publish(policy=draft, actor=None)
    version.document = {}
    with pytest.raises(ValidationError):
        version.save()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"target_model": "forbidden"}, "rule 'vip': target model 'forbidden' is not allowed for this tenant"),
        ({"fallback_models": "forbidden"}, "rule 'vip': fallback model 'forbidden' is not allowed for this tenant"),
        ({"fallback_models": "acme-large"}, "rule 'vip': 'acme-large' appears twice in the chain"),
        ({"fallback_models": "acme-small, acme-other, acme-small"}, "rule 'vip': 'acme-small' appears twice"),
        ({"message_regex": "(unclosed"}, "rule 'vip': invalid regex '(unclosed'"),
        ({"requested_models": "smart"}, "rule 'vip': 'smart' is neither an alias of this policy nor a model"),
        ({"priority": 20}, "rule 'vip': priority 20 is also used by rule 'other'"),
        ({"provider_cache": "on"}, "rule 'vip': provider_cache must be auto or off"),
    ],
)
def test_an_invalid_draft_is_refused_naming_the_rule_and_the_live_version_stays(draft, acme_routing, change, expected):
    live = routing_policy_publish(policy=draft, actor=None)
    ModelFactory(name="forbidden")
    RoutingRule.objects.create(policy=draft, priority=20, name="other")
    rule = draft.rules.get(name="vip")
    if change.get("target_model"):
        change = {"target_model": ModelFactory._meta.model.objects.get(name="forbidden")}
    RoutingRule.objects.unscoped().filter(pk=rule.pk).update(**change)
    message = refusal(draft)
    assert expected in message
    draft.refresh_from_db()
    assert draft.live_version == live
    assert draft.versions.count() == 1
    assert RoutingPolicyAudit.objects.unscoped().count() == 1


def test_an_alias_to_a_model_the_tenant_may_not_use_is_refused(draft):
    RoutingAlias.objects.create(
        policy=draft, name="smart", small_model=ModelFactory(name="nope"), large_model=ModelFactory(name="nope2")
    )
    assert "alias 'smart': the small model 'nope' is not allowed for this tenant" in refusal(draft)


def test_rollback_publishes_the_old_document_again_resets_the_draft_and_audits_the_diff(draft, acme_routing):
    first = routing_policy_publish(policy=draft, actor=None)
    draft.auto_threshold = 80
    draft.save()
    RoutingRule.objects.unscoped().filter(name="vip").update(target_model=acme_routing.other)
    RoutingRule.objects.create(policy=draft, priority=30, name="new-rule", task_types="chat")
    second = routing_policy_publish(policy=draft, actor=None)
    publish_audit = RoutingPolicyAudit.objects.unscoped().get(version=second)
    assert publish_audit.diff == {
        "settings": {"auto_threshold": [50, 80]},
        "rules_added": ["new-rule"],
        "rules_changed": {"vip": {"target_model": ["acme-large", "acme-other"]}},
    }
    actor = UserFactory()
    third = routing_policy_rollback(policy=draft, version=first, actor=actor)
    draft.refresh_from_db()
    assert third.number == 3 and third.document == first.document
    assert draft.live_version == third
    assert draft.auto_threshold == 50
    assert list(draft.rules.values_list("name", "target_model__name")) == [("vip", "acme-large")]
    rollback_audit = RoutingPolicyAudit.objects.unscoped().get(version=third)
    assert (rollback_audit.action, rollback_audit.actor, rollback_audit.previous_version) == ("rollback", actor, second)
    assert rollback_audit.diff["rules_removed"] == ["new-rule"]


def test_rollback_to_another_policys_version_is_refused(draft, globex_routing):
    other = routing_policy_create_default(
        tenant=globex_routing.tenant, small_model=globex_routing.small, large_model=globex_routing.large
    )
    with pytest.raises(ValidationError):
        routing_policy_rollback(policy=draft, version=other.live_version, actor=None)


def test_the_default_template_routes_like_the_seed(acme_routing):
    policy = routing_policy_create_default(
        tenant=acme_routing.tenant, small_model=acme_routing.small, large_model=acme_routing.large
    )
    assert policy.live_version.number == 1 and policy.rules.count() == 5
    live = build_live_policies(tenant_id=acme_routing.tenant.pk)[acme_routing.tenant.pk]
    catalog = build_model_catalog(tenant_id=acme_routing.tenant.pk)

    def route(**fields):
        request = RouteRequest(
            tenant_id=acme_routing.tenant.pk, **{"requested_model": "auto", "prompt_tokens": 100, **fields}
        )
        return route_request(live, request, catalog)

    assert route(task_type="classification").rule_name == "short-classification-and-summaries"
    enterprise = route(user_tier="enterprise")
    assert (enterprise.outcome.target_model, enterprise.outcome.fallback_models, enterprise.routed_to_large) == (
        "acme-large",
        ("acme-small",),
        True,
    )
    # Every other `auto` request falls through to the alias's difficulty score, and is compressed over the cap.
    long_summary = route(task_type="summarization", prompt_tokens=1200)
    assert (long_summary.rule_name, long_summary.route, long_summary.outcome.target_model) == (
        "otherwise-by-difficulty",
        "otherwise-by-difficulty+score",
        "acme-small",
    )
    assert (long_summary.outcome.prompt_token_cap, long_summary.outcome.over_cap_action) == (4000, "compress")
    hard = route(prompt_tokens=2500, last_user_message="Prove this equation:\n```python\ndef f(x): return x\n```")
    assert (hard.outcome.target_model, hard.outcome.fallback_models, hard.routed_to_large) == (
        "acme-large",
        ("acme-small",),
        True,
    )
    assert (hard.difficulty.total, hard.outcome.over_cap_action) == (60, "compress")
    named = route(requested_model="acme-large")
    assert (named.outcome.target_model, named.rule_name, named.outcome.prompt_token_cap) == (
        "acme-large",
        "prompt-cap",
        4000,
    )
    assert named.outcome.over_cap_action == "compress"
    # Rejecting is for what compression could not answer well.
    huge = route(requested_model="acme-large", prompt_tokens=32_001)
    assert (huge.rule_name, huge.outcome.prompt_token_cap, huge.outcome.over_cap_action) == (
        "too-long-to-compress",
        32_000,
        "reject",
    )


def test_ensure_default_picks_the_cheapest_and_dearest_allowed_models_once(acme_routing):
    model_price_set(model=acme_routing.large, prices={"output_price_per_million": Decimal(10)}, source="test")
    policy = routing_policy_ensure_default(tenant=acme_routing.tenant)
    alias = policy.aliases.get(name="auto")
    assert (alias.large_model, policy.live_version.number) == (acme_routing.large, 1)
    assert routing_policy_ensure_default(tenant=acme_routing.tenant) is None


def test_a_rules_provider_cache_is_off_unless_it_opts_in_and_a_version_from_before_it_reads_as_off(draft):
    RoutingRule.objects.create(policy=draft, priority=20, name="public-faq", provider_cache="auto")

    version = routing_policy_publish(policy=draft, actor=None)

    outcomes = {rule["name"]: rule["outcome"]["provider_cache"] for rule in version.document["rules"]}
    assert outcomes == {"vip": "off", "public-faq": "auto"}
    older = {"rules": [{"priority": 1, "name": "old", "outcome": {"cache_ttl_seconds": 60}}]}
    assert compile_policy(older).rules[0].outcome.provider_cache == "off"
