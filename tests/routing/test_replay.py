"""Routing replayed over recorded requests whose features are partly unknown (the what-if's routing): a rule that reads
an unknown feature leaves the request undecided, naming the rule, instead of a guess."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.catalog import ModelCatalog, ModelEntry, ModelPrices, ProviderEntry, TenantAccess
from routing.policy import RouteRequest, compile_policy
from routing.policy.replay import (
    HINTS,
    LEDGER_BLIND,
    Feature,
    ReplayDecision,
    ReplayRequest,
    difficulty_score_cuts,
    prompt_token_cuts,
    replay_route,
)

TENANT_ID = 7
PROVIDER = ProviderEntry(name="p", kind="openai", base_url="http://127.0.0.1:1/v1", api_key="", timeout_seconds=5.0)


def entry(name: str) -> ModelEntry:
    prices = ModelPrices(Decimal("1"), Decimal("0.5"), Decimal("2"))
    return ModelEntry(name=name, upstream_name=name, provider=PROVIDER, prices=prices, context_window=128_000)


CATALOG = ModelCatalog(
    models={name: entry(name) for name in ("small", "large", "mid", "not-granted")},
    access_by_tenant={
        TENANT_ID: TenantAccess(default_model="small", allowed_models=frozenset({"small", "large", "mid"}))
    },
)


def policy(*rules: dict, threshold: int = 50, aliases: dict | None = None):
    ordered = [{"priority": index + 1, **rule} for index, rule in enumerate(rules)]
    default_aliases = {"auto": {"small": "small", "large": "large"}}
    document = {"aliases": default_aliases if aliases is None else aliases, "rules": ordered}
    return compile_policy({**document, "auto_threshold": threshold})


def from_ledger(*, hints_recorded: bool = True, score: int | None = None, **fields) -> ReplayRequest:
    """A request as its ledger row rebuilds it: the message and max_tokens unknown, the hints too on an old row."""
    features = RouteRequest(**{"tenant_id": TENANT_ID, "requested_model": "auto", "prompt_tokens": 200, **fields})
    unknown = LEDGER_BLIND | (frozenset() if hints_recorded else HINTS)
    return ReplayRequest(features=features, unknown=unknown, difficulty_score=score)


TASK_RULE = {"name": "classify", "match": {"task_types": ["classification"]}, "outcome": {"target_model": "mid"}}


def test_a_rule_reading_an_unknown_hint_leaves_the_request_undecided_naming_the_rule():
    decision = replay_route(policy(TASK_RULE), from_ledger(hints_recorded=False), CATALOG)

    assert decision == ReplayDecision(undecided="rule classify reads task_type")


def test_a_known_condition_that_fails_skips_the_rule_even_when_it_also_reads_an_unknown():
    rule = {"name": "gpt-keywords", "match": {"requested_models": ["gpt"], "keywords": ["refund"]}}
    catch_all = {"name": "all", "outcome": {"target_model": "mid"}}

    decision = replay_route(policy(rule, catch_all), from_ledger(), CATALOG)

    assert decision == ReplayDecision(rule="all", model="mid")


def test_keywords_and_regex_read_the_message_which_the_ledger_never_keeps():
    keywords = {"name": "refunds", "match": {"keywords": ["refund"]}, "outcome": {"target_model": "mid"}}
    regex = {"name": "orders", "match": {"message_regex": "order #"}, "outcome": {"target_model": "mid"}}

    assert replay_route(policy(keywords), from_ledger(), CATALOG).undecided == "rule refunds reads message"
    assert replay_route(policy(regex), from_ledger(), CATALOG).undecided == "rule orders reads message"


def test_recorded_hints_decide_as_the_gateway_did():
    assert replay_route(policy(TASK_RULE), from_ledger(task_type="Classification"), CATALOG) == ReplayDecision(
        rule="classify", model="mid"
    )
    assert replay_route(policy(TASK_RULE), from_ledger(task_type="chat", score=10), CATALOG) == ReplayDecision(
        model="small"
    )


@pytest.mark.parametrize(("score", "model"), [(50, "large"), (49, "small")])
def test_a_recorded_difficulty_score_decides_the_alias(score, model):
    decision = replay_route(policy(), from_ledger(score=score), CATALOG)

    assert decision == ReplayDecision(model=model)


def test_without_a_score_the_alias_is_undecided_unless_the_known_points_settle_it():
    # 200 prompt tokens give 2 points; the message and max_tokens could add up to 65 more.
    assert replay_route(policy(), from_ledger(), CATALOG).undecided == (
        "alias auto: the difficulty score reads the message"
    )
    # At least 2 points: a threshold of 2 is met whatever the message says; at most 67: a threshold of 68 is not.
    assert replay_route(policy(threshold=2), from_ledger(), CATALOG).model == "large"
    assert replay_route(policy(threshold=68), from_ledger(), CATALOG).model == "small"
    # 3,000 tokens and tools: at least 45 points.
    assert replay_route(policy(threshold=45), from_ledger(prompt_tokens=3000, has_tools=True), CATALOG).model == "large"
    assert replay_route(policy(threshold=46), from_ledger(prompt_tokens=3000, has_tools=True), CATALOG).undecided


def test_the_message_scores_the_alias_when_the_payload_log_has_it():
    message = "First def solve(x): then prove the theorem step by step"
    features = RouteRequest(tenant_id=TENANT_ID, requested_model="auto", prompt_tokens=200, last_user_message=message)

    decision = replay_route(policy(), ReplayRequest(features=features), CATALOG)

    assert decision == ReplayDecision(model="large")


def test_keywords_match_the_logged_message_as_live_routing_does_whatever_its_case_and_unicode_form():
    keywords = {"name": "streets", "match": {"keywords": ["STRASSE"]}, "outcome": {"target_model": "mid"}}
    features = RouteRequest(
        tenant_id=TENANT_ID, requested_model="mid", prompt_tokens=200, last_user_message="Which Straße?"
    )

    assert replay_route(policy(keywords), ReplayRequest(features=features), CATALOG) == ReplayDecision(
        rule="streets", model="mid"
    )


def test_a_rule_that_would_refuse_over_its_cap_refuses_and_an_unknown_count_is_undecided():
    capped = {"name": "capped", "outcome": {"prompt_token_cap": 100, "over_cap_action": "reject"}}
    unknown_count = ReplayRequest(
        features=RouteRequest(tenant_id=TENANT_ID, requested_model="mid", prompt_tokens=0),
        unknown=LEDGER_BLIND | {Feature.PROMPT_TOKENS},
    )

    assert replay_route(policy(capped), from_ledger(requested_model="mid"), CATALOG) == ReplayDecision(
        rule="capped", refused="token_cap_exceeded"
    )
    undecided = replay_route(policy(capped), unknown_count, CATALOG).undecided
    assert undecided == "rule capped's prompt cap reads prompt_tokens"


def test_what_the_gateway_would_refuse_is_refused():
    assert replay_route(policy(aliases={}), from_ledger(), CATALOG).refused == "unknown_alias"
    assert replay_route(policy(), from_ledger(requested_model="not-granted"), CATALOG).refused == "model_not_allowed"
    assert replay_route(policy(), from_ledger(requested_model="gone"), CATALOG).refused == "model_not_found"


def test_a_rule_target_the_tenant_lost_replays_to_its_fallback_as_live_routing_serves_it():
    lost = {"name": "lost", "outcome": {"target_model": "not-granted", "fallback_models": ["mid"]}}
    assert replay_route(policy(lost), from_ledger(), CATALOG) == ReplayDecision(rule="lost", model="mid")
    lost_alone = {"name": "lost", "outcome": {"target_model": "not-granted"}}
    assert replay_route(policy(lost_alone), from_ledger(), CATALOG) == ReplayDecision(
        rule="lost", refused="model_not_allowed"
    )


def test_without_a_policy_auto_is_the_tenants_default_model():
    assert replay_route(None, from_ledger(), CATALOG) == ReplayDecision(model="small")


def cut_class(value: int, cuts: list[int]) -> int:
    return next((cut for cut in cuts if value >= cut), 0)


@settings(max_examples=300, deadline=None)
@given(
    low=st.integers(0, 5000),
    span=st.integers(0, 5000),
    cap=st.integers(1, 8000),
    threshold=st.integers(0, 100),
    tokens=st.integers(0, 10_000),
    score=st.integers(0, 100),
)
def test_a_count_and_a_score_route_as_the_highest_cut_below_them(low, span, cap, threshold, tokens, score):
    """The what-if groups recorded requests by these classes: each must route exactly as its members do."""
    banded = {"name": "banded", "match": {"prompt_tokens_min": low, "prompt_tokens_max": low + span}}
    capped = {"name": "capped", "outcome": {"prompt_token_cap": cap, "over_cap_action": "reject"}}
    live = policy(banded | {"outcome": {"target_model": "mid"}}, threshold=threshold)
    draft = policy(banded, capped, threshold=max(threshold - 7, 0))
    token_cuts, score_cuts = prompt_token_cuts(live, draft), difficulty_score_cuts(live, draft)

    for compiled in (live, draft):
        for recorded in (score, None):
            exact = from_ledger(prompt_tokens=tokens, score=recorded)
            classed = from_ledger(
                prompt_tokens=cut_class(tokens, token_cuts),
                score=None if recorded is None else cut_class(recorded, score_cuts),
            )
            assert replay_route(compiled, exact, CATALOG) == replay_route(compiled, classed, CATALOG)
