"""The difficulty score behind `auto`: each feature adds its points, and the threshold splits small from large."""

import pytest

from routing.catalog import ModelCatalog, TenantAccess
from routing.policy import RouteRequest, compile_policy, route_request
from routing.policy.scoring import difficulty_score

CATALOG = ModelCatalog(models={}, access_by_tenant={1: TenantAccess("small", frozenset({"small", "large"}))})


def score(**fields):
    return difficulty_score(
        **{"prompt_tokens": 0, "last_user_message": "", "has_tools": False, "requested_max_tokens": None, **fields}
    )


@pytest.mark.parametrize(
    ("fields", "feature", "points"),
    [
        ({"prompt_tokens": 1500}, "length", 15),
        ({"prompt_tokens": 90_000}, "length", 30),
        ({"last_user_message": "Fix this:\n```python\nprint(1)\n```"}, "code", 20),
        ({"last_user_message": "def parse(x):\n    return x"}, "code", 20),
        ({"last_user_message": "Prove the theorem"}, "math", 15),
        ({"last_user_message": "Explain step by step"}, "multi_step", 15),
        ({"last_user_message": "Do this:\n1. read\n2. sort\n3. write"}, "multi_step", 15),
        ({"has_tools": True}, "tools", 15),
        ({"requested_max_tokens": 1000}, "output", 5),
        ({"requested_max_tokens": 100_000}, "output", 15),
    ],
)
def test_each_feature_adds_its_points(fields, feature, points):
    result = score(**fields)
    assert result.points[feature] == points
    assert result.total == points


def test_a_plain_question_scores_zero():
    assert score(last_user_message="What is the capital of France?", prompt_tokens=20).total == 0


def test_the_total_is_capped_at_100():
    hard = score(
        prompt_tokens=50_000,
        last_user_message="Step by step, prove this equation and write ```code```",
        has_tools=True,
        requested_max_tokens=10_000,
    )
    assert hard.total == 100


@pytest.mark.parametrize(("threshold", "expected"), [(35, "large"), (36, "small")])
def test_the_threshold_splits_small_from_large_and_the_header_shows_the_score(threshold, expected):
    policy = compile_policy({"auto_threshold": threshold, "aliases": {"auto": {"small": "small", "large": "large"}}})
    request = RouteRequest(
        tenant_id=1, requested_model="auto", prompt_tokens=10, last_user_message="```x```", has_tools=True
    )
    decision = route_request(policy, request, CATALOG)
    assert decision.outcome.target_model == expected
    assert decision.difficulty.total == 35
    assert decision.routed_to_large is (expected == "large")
    relation = ">=" if expected == "large" else "<"
    assert decision.explanation == (
        f"alias=auto;score=35{relation}{threshold}(code+20,tools+15)->{expected} model={expected} policy=v0"
    )
    assert decision.route == "score"


def test_features_of_a_long_message_are_looked_for_at_its_start_and_end_only():
    filler = "plain words " * 5_000

    assert score(last_user_message=f"Prove it. {filler}").points["math"] == 15
    assert score(last_user_message=f"{filler} Explain step by step").points["multi_step"] == 15
    assert score(last_user_message=f"{filler[:30_000]} def parse(x): {filler[:30_000]}").points["code"] == 0
