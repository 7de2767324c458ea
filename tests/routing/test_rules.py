"""Rule matching for every match field, aliases and the explanation header, under a compiled policy; a regex that
runs too long, keywords in any case and Unicode form, and a policy's pick the tenant may no longer use."""

import logging
import time

import pytest

from routing.catalog import ModelCatalog, TenantAccess
from routing.policy import RouteRequest, RoutingRefusal, compile_policy, route_request, route_request_from_body
from routing.policy.document import policy_document_errors

TENANT_ID = 7
CATALOG = ModelCatalog(
    models={},
    access_by_tenant={
        TENANT_ID: TenantAccess(default_model="small", allowed_models=frozenset({"small", "large", "mid"}))
    },
)


def policy_with(match: dict, *, outcome: dict | None = None, **settings):
    return compile_policy(
        {
            "aliases": {"auto": {"small": "small", "large": "large"}},
            "rules": [
                {"priority": 1, "name": "the-rule", "match": match, "outcome": outcome or {"target_model": "mid"}}
            ],
            **settings,
        },
        version=3,
    )


def request(**fields) -> RouteRequest:
    return RouteRequest(**{"tenant_id": TENANT_ID, "requested_model": "auto", "prompt_tokens": 10, **fields})


MATCH_CASES = [
    ({"requested_models": ["fast"]}, {"requested_model": "fast"}, {"requested_model": "slow"}),
    ({"task_types": ["classification"]}, {"task_type": "Classification"}, {"task_type": "chat"}),
    ({"user_tiers": ["enterprise"]}, {"user_tier": "enterprise"}, {"user_tier": "free"}),
    ({"team_slugs": ["support"]}, {"team_slug": "support"}, {"team_slug": "analytics"}),
    ({"prompt_tokens_min": 100}, {"prompt_tokens": 100}, {"prompt_tokens": 99}),
    ({"prompt_tokens_max": 1199}, {"prompt_tokens": 1199}, {"prompt_tokens": 1200}),
    ({"has_tools": True}, {"has_tools": True}, {"has_tools": False}),
    ({"has_tools": False}, {"has_tools": False}, {"has_tools": True}),
    ({"has_images": True}, {"has_images": True}, {"has_images": False}),
    ({"keywords": ["invoice", "refund"]}, {"last_user_message": "My REFUND please"}, {"last_user_message": "hello"}),
    ({"message_regex": r"order #\d+"}, {"last_user_message": "where is Order #123?"}, {"last_user_message": "order"}),
]


@pytest.mark.parametrize(("match", "matching", "not_matching"), MATCH_CASES, ids=[str(case[0]) for case in MATCH_CASES])
def test_each_match_field_decides_whether_the_rule_applies(match, matching, not_matching):
    policy = policy_with(match)
    hit = route_request(policy, request(**matching), CATALOG)
    miss = route_request(policy, request(**not_matching), CATALOG)
    assert (hit.outcome.target_model, hit.rule_name) == ("mid", "the-rule")
    assert miss.rule_name == ""
    assert miss.outcome.target_model != "mid"


def test_the_lowest_priority_number_that_matches_decides_and_the_trace_says_why_others_were_skipped():
    policy = compile_policy(
        {
            "aliases": {"auto": {"small": "small", "large": "large"}},
            "rules": [
                {"priority": 20, "name": "catch-all", "outcome": {"target_model": "small"}},
                {
                    "priority": 10,
                    "name": "vip",
                    "match": {"user_tiers": ["enterprise"]},
                    "outcome": {"target_model": "large"},
                },
            ],
        }
    )
    decision = route_request(policy, request(user_tier="free"), CATALOG, trace=True)
    assert decision.rule_name == "catch-all"
    assert decision.trace[0] == "rule vip (priority 10) skipped: user_tier 'free' not in ['enterprise']"
    assert decision.trace[1].startswith("rule catch-all (priority 20) matched")
    assert route_request(policy, request(user_tier="enterprise"), CATALOG).outcome.target_model == "large"


def test_outcome_carries_chain_caps_and_cache_settings_and_the_header_names_the_rule():
    outcome = {
        "target_model": "large",
        "fallback_models": ["mid", "small"],
        "prompt_token_cap": 4000,
        "over_cap_action": "compress",
        "max_tokens_cap": 500,
        "default_max_tokens": 200,
        "cache_ttl_seconds": 600,
        "cache_nondeterministic": True,
        "provider_cache": "off",
    }
    decision = route_request(policy_with({}, outcome=outcome), request(), CATALOG)
    assert decision.outcome.fallback_models == ("mid", "small")
    assert (decision.outcome.prompt_token_cap, decision.outcome.over_cap_action) == (4000, "compress")
    assert (decision.outcome.max_tokens_cap, decision.outcome.default_max_tokens) == (500, 200)
    assert (decision.outcome.cache_ttl_seconds, decision.outcome.cache_nondeterministic) == (600, True)
    assert decision.outcome.provider_cache == "off"
    assert decision.explanation == "rule=the-rule model=large policy=v3"
    assert decision.routed_to_large is True
    assert decision.route == "the-rule"


def test_fallbacks_the_tenant_lost_access_to_are_skipped():
    decision = route_request(
        policy_with({}, outcome={"target_model": "large", "fallback_models": ["gone", "small"]}), request(), CATALOG
    )
    assert decision.outcome.fallback_models == ("small",)


def test_a_rule_without_target_keeps_a_named_model_and_applies_its_cap():
    policy = policy_with({}, outcome={"prompt_token_cap": 4000})
    decision = route_request(policy, request(requested_model="mid"), CATALOG)
    assert (decision.outcome.target_model, decision.outcome.prompt_token_cap, decision.rule_name) == (
        "mid",
        4000,
        "the-rule",
    )


def test_default_resolves_to_the_tenants_default_model():
    assert (
        route_request(
            policy_with({"user_tiers": ["x"]}), request(requested_model="default"), CATALOG
        ).outcome.target_model
        == "small"
    )


def test_an_alias_the_policy_lacks_is_refused_and_without_a_policy_auto_means_default():
    policy = compile_policy({"aliases": {}, "rules": []})
    with pytest.raises(RoutingRefusal) as refused:
        route_request(policy, request(), CATALOG)
    assert (refused.value.status, refused.value.code) == (400, "unknown_alias")
    decision = route_request(None, request(), CATALOG)
    assert (decision.outcome.target_model, decision.explanation) == ("small", "no-policy model=small")


def test_features_come_from_body_metadata_before_headers():
    body = {
        "model": "auto",
        "metadata": {"task_type": "classification"},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "max_completion_tokens": 300,
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
    }
    headers = {"x-llmops-task-type": "chat", "x-llmops-user-tier": "enterprise"}
    features = route_request_from_body(body, headers=headers, tenant_id=1, team_slug="support", prompt_tokens=42)
    assert features.task_type == "classification"
    assert features.user_tier == "enterprise"
    assert (features.has_tools, features.has_images) == (True, True)
    assert features.last_user_message == "what is in "
    assert (features.requested_max_tokens, features.prompt_tokens, features.team_slug) == (300, 42, "support")


# A pattern that backtracks through every way of splitting the run of a's before failing on the "!": seconds of
# searching in Python's re and in the regex module alike, without a timeout.
CATASTROPHIC = r"^(a|a)+$"


def test_a_regex_that_backtracks_without_end_gives_up_and_counts_as_no_match(caplog):
    policy = policy_with({"message_regex": CATASTROPHIC})
    message = "a" * 25 + "!"

    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="routing.policy.engine"):
        decision = route_request(policy, request(last_user_message=message), CATALOG, trace=True)
    elapsed = time.perf_counter() - started

    assert elapsed < 1, f"routing took {elapsed:.2f}s"
    assert decision.rule_name == ""
    assert decision.trace[0].startswith(f"rule the-rule (priority 1) skipped: regex {CATASTROPHIC!r} gave up after")
    (warning,) = caplog.records
    assert "'the-rule'" in warning.getMessage() and f"tenant {TENANT_ID}" in warning.getMessage()
    assert message not in warning.getMessage()
    # The same rule still matches what it was written for.
    assert route_request(policy, request(last_user_message="aaaa"), CATALOG).rule_name == "the-rule"


def test_a_plain_regex_still_matches_a_long_prompt():
    """The search's time grows with the prompt however simple the pattern; a flat 5 ms gave up on 200 KB."""
    policy = policy_with({"message_regex": r"(refund|chargeback|invoice)"})
    message = "lorem ipsum dolor sit amet " * 20_000 + "about my refund"

    assert route_request(policy, request(last_user_message=message), CATALOG).rule_name == "the-rule"


def test_regexes_are_validated_and_matched_by_the_same_module_case_insensitively():
    # \p{L} (any letter) is the regex module's; Python's re refused it, so publishing must validate with regex.
    pattern = r"^\p{L}\w* order #\d+"
    models = frozenset({"small"})
    document = {"aliases": {}, "rules": [{"priority": 1, "name": "r", "match": {"message_regex": pattern}}]}
    assert policy_document_errors(document, allowed_models=models, known_models=models) == []
    unclosed = {"aliases": {}, "rules": [{"priority": 1, "name": "r", "match": {"message_regex": "(unclosed"}}]}
    (error,) = policy_document_errors(unclosed, allowed_models=models, known_models=models)
    assert error.startswith("rule 'r': invalid regex '(unclosed'")
    policy = policy_with({"message_regex": pattern})
    assert route_request(policy, request(last_user_message="Élan order #12"), CATALOG).rule_name == "the-rule"
    assert route_request(policy, request(last_user_message="élan ORDER #12"), CATALOG).rule_name == "the-rule"
    assert route_request(policy, request(last_user_message="1lan order #12"), CATALOG).rule_name == ""


KEYWORD_CASES = [
    ("straße", "Where is the STRASSE?"),
    ("STRASSE", "Die Straße ist lang"),
    ("café", "a CAFE\u0301 nearby"),  # a composed keyword, a decomposed message
    ("cafe\u0301", "the café"),
    ("istanbul", "Flights to İSTANBUL"),
    ("İstanbul", "FLIGHTS TO ISTANBUL"),
    ("ﬁle", "FILE a claim"),
]


@pytest.mark.parametrize(("keyword", "message"), KEYWORD_CASES, ids=[case[0] for case in KEYWORD_CASES])
def test_keywords_match_whatever_the_case_and_unicode_form(keyword, message):
    policy = policy_with({"keywords": [keyword]})
    assert route_request(policy, request(last_user_message=message), CATALOG).rule_name == "the-rule"
    assert route_request(policy, request(last_user_message="nothing here"), CATALOG).rule_name == ""


GONE_CATALOG = ModelCatalog(
    models={},
    access_by_tenant={TENANT_ID: TenantAccess(default_model="small", allowed_models=frozenset({"small", "mid"}))},
)


def test_a_rule_target_the_tenant_lost_gives_way_to_its_first_fallback_and_the_route_says_so():
    policy = policy_with({}, outcome={"target_model": "large", "fallback_models": ["gone", "mid", "small"]})

    decision = route_request(policy, request(), GONE_CATALOG, trace=True)

    assert (decision.outcome.target_model, decision.outcome.fallback_models) == ("mid", ("small",))
    assert decision.route == "the-rule"
    assert decision.explanation == "rule=the-rule model=mid unavailable=large policy=v3"
    assert decision.trace[-1] == "model large skipped: the tenant may no longer use it; fallback mid serves"
    assert decision.routed_to_large is False


def test_an_alias_pick_the_tenant_lost_gives_way_to_the_rules_fallback():
    policy = policy_with({}, outcome={"fallback_models": ["small"]}, auto_threshold=0)

    decision = route_request(policy, request(), GONE_CATALOG)

    assert (decision.outcome.target_model, decision.routed_to_large) == ("small", False)
    assert decision.route == "the-rule+score"
    assert "->large model=small unavailable=large policy=v3" in decision.explanation


def test_a_model_the_client_named_is_left_for_the_gateway_to_refuse():
    policy = policy_with({}, outcome={"fallback_models": ["small"]})
    assert route_request(policy, request(requested_model="large"), GONE_CATALOG).outcome.target_model == "large"


def test_a_policy_pick_with_nothing_left_the_tenant_may_use_is_refused_naming_the_rule():
    policy = policy_with({}, outcome={"target_model": "large", "fallback_models": ["gone"]})

    with pytest.raises(RoutingRefusal) as refused:
        route_request(policy, request(), GONE_CATALOG)

    assert (refused.value.status, refused.value.code, refused.value.param) == (403, "model_not_allowed", "model")
    assert "routing rule 'the-rule' sends this request to `large` then `gone`, none of which" in refused.value.message
