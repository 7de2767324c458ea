"""The request path's part of shadow evaluation: which levers made an answer cheaper, each with its reference, one
independent draw per lever, and the sample sealed before it leaves the process."""

import random
from dataclasses import replace
from decimal import Decimal

import pytest

from billing.ledger.costs import Usage
from billing.models import CacheStatus, Lever
from llmops.gateway.call import GatewayCall
from llmops.gateway.shadow.rates import EvaluationRates
from llmops.gateway.shadow.samples import ShadowSample, sample_open, sample_seal
from llmops.gateway.shadow.sampling import levers_of, shadow_draw
from routing.catalog import ModelEntry, ModelPrices, ProviderEntry
from routing.models import ModelKind
from tenants.authentication import KeyPrincipal

PROVIDER = ProviderEntry(name="mock", kind="openai", base_url="http://127.0.0.1/v1", api_key="", timeout_seconds=5)
SMALL = ModelEntry(
    "small", "mock-small", PROVIDER, ModelPrices(Decimal("0.15"), Decimal("0.075"), Decimal("0.6")), 8000
)
MEDIUM = ModelEntry("medium", "mock-medium", PROVIDER, ModelPrices(Decimal(1), Decimal("0.5"), Decimal(4)), 8000)
LARGE = ModelEntry("large", "mock-large", PROVIDER, ModelPrices(Decimal("2.5"), Decimal("1.25"), Decimal(10)), 8000)
PRINCIPAL = KeyPrincipal(1, "llm_x", "", 7, "acme", 3, "support", None, None, True, True)
USAGE = Usage(prompt_tokens=100, completion_tokens=10)
ALL_ON = EvaluationRates(routing=1.0, semantic_cache=1.0, compression=1.0, budget_downgrade=1.0)


def answered(served=SMALL, baseline=LARGE, **facts) -> GatewayCall:
    """A request answered by ``served``, routing's own choice unless ``routed`` says otherwise."""
    facts.setdefault("routed", served)
    call = GatewayCall(principal=PRINCIPAL, served=served, routing_baseline=baseline, **facts)
    call.settled_usage = USAGE
    return call


def test_an_answer_of_a_cheaper_model_than_its_baseline_is_routing_s_with_the_baseline_as_reference():
    assert levers_of(answered()) == [(Lever.ROUTING, LARGE)]


@pytest.mark.parametrize(("served", "baseline"), [(LARGE, LARGE), (LARGE, SMALL), (SMALL, None)])
def test_an_answer_of_its_baseline_or_a_dearer_model_is_no_lever_s(served, baseline):
    assert levers_of(answered(served, baseline)) == []


@pytest.mark.parametrize(
    ("baseline", "facts"),
    [
        (replace(LARGE, supports_tools=False), {"has_tools": True}),
        (replace(LARGE, supports_images=False), {"has_images": True}),
        (replace(LARGE, kind=ModelKind.EMBEDDING), {}),
    ],
    ids=["tools", "images", "not-chat"],
)
def test_a_baseline_that_cannot_take_the_request_is_no_reference(baseline, facts):
    assert levers_of(answered(SMALL, baseline, **facts)) == []
    assert levers_of(answered(SMALL, LARGE, **facts)) == [(Lever.ROUTING, LARGE)]


@pytest.mark.parametrize("routed", [LARGE, MEDIUM], ids=["baseline", "another-cheap-model"])
def test_an_answer_a_fallback_gave_after_routing_s_choice_failed_is_not_routing_s(routed):
    assert levers_of(answered(SMALL, LARGE, routed=routed)) == []


def test_an_exact_cache_hit_is_no_lever_s_the_miss_that_stored_it_was_a_candidate_already():
    hit = answered(
        cache_status=CacheStatus.HIT_EXACT, prompt_tokens_before_compression=900, prompt_tokens_after_compression=300
    )
    hit.settled_usage, hit.cache_saved_usage = Usage(), USAGE

    assert levers_of(hit) == []


def test_a_semantic_hit_is_the_cache_s_only_with_a_fresh_call_to_the_served_model_as_reference():
    """Its answer was written for another prompt: it tells nothing of routing or compression."""
    hit = answered(
        cache_status=CacheStatus.HIT_SEMANTIC, prompt_tokens_before_compression=900, prompt_tokens_after_compression=1
    )
    hit.settled_usage, hit.cache_saved_usage = Usage(), USAGE

    assert levers_of(hit) == [(Lever.SEMANTIC_CACHE, SMALL)]


def test_a_compressed_prompt_is_compression_s_with_the_served_model_as_reference():
    compressed = answered(LARGE, LARGE, prompt_tokens_before_compression=900, prompt_tokens_after_compression=300)
    uncompressed = answered(LARGE, LARGE, prompt_tokens_before_compression=300, prompt_tokens_after_compression=300)

    assert levers_of(compressed) == [(Lever.COMPRESSION, LARGE)]
    assert levers_of(uncompressed) == []


def test_a_downgraded_request_is_the_downgrade_s_only_with_the_route_s_model_as_reference():
    downgraded = answered(SMALL, LARGE, downgraded_from=LARGE, cache_status=CacheStatus.MISS)

    assert levers_of(downgraded) == [(Lever.BUDGET_DOWNGRADE, LARGE)]


def test_several_levers_of_one_answer_are_each_listed():
    call = answered(
        cache_status=CacheStatus.MISS, prompt_tokens_before_compression=900, prompt_tokens_after_compression=1
    )

    assert levers_of(call) == [(Lever.ROUTING, LARGE), (Lever.COMPRESSION, SMALL)]


def test_a_tenant_without_evaluation_draws_nothing():
    assert shadow_draw(answered()) == {}


def test_each_lever_draws_on_its_own_at_its_own_rate():
    random.seed(18)
    call = answered(
        prompt_tokens_before_compression=900,
        prompt_tokens_after_compression=300,
        evaluation=EvaluationRates(routing=0.5, semantic_cache=1.0, compression=0.2, budget_downgrade=0.0),
    )
    draws = [shadow_draw(call) for _ in range(4000)]

    share = {lever: sum(lever in drawn for drawn in draws) / len(draws) for lever in ("routing", "compression")}
    both = sum({"routing", "compression"} <= drawn.keys() for drawn in draws) / len(draws)
    assert abs(share["routing"] - 0.5) < 0.03 and abs(share["compression"] - 0.2) < 0.03
    # Independent draws: both at once as often as the product of the rates.
    assert abs(both - 0.1) < 0.02
    # A lever that did not make this answer cheaper is never drawn, whatever its rate.
    assert not any("semantic_cache" in drawn for drawn in draws)
    assert all(drawn.get("routing", LARGE.name) == LARGE.name for drawn in draws)


def test_at_rate_one_every_lever_is_drawn():
    call = answered(evaluation=ALL_ON, prompt_tokens_before_compression=900, prompt_tokens_after_compression=300)

    assert shadow_draw(call) == {"routing": "large", "compression": "small"}


def test_a_sealed_sample_shows_neither_prompt_nor_answer_and_opens_as_it_was():
    sample = ShadowSample(
        request_id="req_1",
        tenant_id=7,
        team_id=3,
        api_key_id=1,
        served_model="small",
        levers={"routing": "large"},
        body={"model": "auto", "messages": [{"role": "user", "content": "my card number is 4111"}]},
        answer="billing dispute",
    )

    sealed = sample_seal(sample)

    assert "4111" not in sealed and "billing" not in sealed
    assert sample_open(sealed) == sample
