"""The what-if replay of a draft policy over a tenant's recorded requests: from payload logs and from ledger features,
undecided where a rule reads what is not known, priced exactly at today's prices, and never across tenants."""

import copy
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.finance.whatif import WhatIfRefused, whatif_replay
from routing.models import Model, RoutingPolicy
from routing.services import default_policy_document, routing_policy_create_default, tenant_model_access_set
from tenants.models import PayloadLog
from tenants.services import api_key_create
from tests.factories import ModelFactory, TeamFactory, TenantFactory, UsageRecordFactory

pytestmark = pytest.mark.django_db

SHORT_TASKS = "short-classification-and-summaries"


def make_tenant(slug: str):
    tenant = TenantFactory(slug=slug)
    small = ModelFactory(name=f"{slug}-small")  # 0.15 / 0.075 / 0.60 per million
    large = ModelFactory(
        name=f"{slug}-large",
        input_price_per_million=Decimal("2.50"),
        cached_input_price_per_million=Decimal("1.25"),
        output_price_per_million=Decimal("10.00"),
        cache_write_price_per_million=Decimal("3.125"),
    )
    tenant_model_access_set(tenant=tenant, allowed_models=[small, large], default_model=small)
    routing_policy_create_default(tenant=tenant, small_model=small, large_model=large)
    api_key, _ = api_key_create(team=TeamFactory(tenant=tenant, slug=f"{slug}-team"), name="key")
    return tenant, api_key


@pytest.fixture
def acme():
    return make_tenant("acme")


def record(api_key, *, minutes_ago: int = 60, **fields):
    """A request of the default policy's era with its routing features recorded (override has_tools=None for a row
    written before the ledger kept them)."""
    values = {
        "requested_model": "auto",
        "has_tools": False,
        "has_images": False,
        "route": "direct",
        "created_at": timezone.now() - timedelta(minutes=minutes_ago),
        **fields,
    }
    return UsageRecordFactory(api_key=api_key, **values)


def classification_on_large(tenant) -> dict:
    """The default policy with classification moved from the short-tasks rule to the large model."""
    document = copy.deepcopy(RoutingPolicy.objects.for_tenant(tenant).get().live_version.document)
    rules = {rule["name"]: rule for rule in document["rules"]}
    rules[SHORT_TASKS]["match"]["task_types"] = ["summarization"]
    document["rules"].append(
        {
            "priority": 12,
            "name": "classification-on-large",
            "match": {"requested_models": ["auto"], "task_types": ["classification"]},
            "outcome": {"target_model": f"{tenant.slug}-large"},
        }
    )
    return document


def line(lines, label):
    return next(item for item in lines if item.label == label)


def test_ledger_only_replay_prices_each_version_exactly_and_sets_undecided_requests_aside(acme):
    tenant, key = acme
    # Live: short tasks on small; draft: on large. 60 uncached, 40 cached, 50 completion tokens.
    record(
        key,
        task_type="classification",
        prompt_tokens=100,
        prompt_tokens_before_compression=100,
        cached_tokens=40,
        completion_tokens=50,
    )
    # Enterprise on large under both; 100 of its 1,000 prompt tokens were written to the provider's cache.
    record(
        key,
        user_tier="enterprise",
        prompt_tokens=1000,
        prompt_tokens_before_compression=1000,
        cache_write_tokens=100,
        completion_tokens=200,
    )
    # Scored 70 when served: large under both (threshold 50).
    record(key, difficulty_score=70, prompt_tokens=300, prompt_tokens_before_compression=300, completion_tokens=100)
    # Written before the ledger kept routing features: the short-tasks rule reads its task type.
    record(
        key,
        has_tools=None,
        prompt_tokens=100,
        prompt_tokens_before_compression=100,
        completion_tokens=10,
        cost_usd=Decimal("0.5"),
    )

    report = whatif_replay(tenant=tenant, days=7, draft=classification_on_large(tenant), draft_label="test draft")

    small_cost = (60 * Decimal("0.15") + 40 * Decimal("0.075") + 50 * Decimal("0.60")) / 1_000_000
    large_cost = (60 * Decimal("2.50") + 40 * Decimal("1.25") + 50 * Decimal("10.00")) / 1_000_000
    enterprise = (900 * Decimal("2.50") + 100 * Decimal("3.125") + 200 * Decimal("10.00")) / 1_000_000
    scored = (300 * Decimal("2.50") + 100 * Decimal("10.00")) / 1_000_000
    assert (report.replayed, report.from_payloads, report.from_ledger) == (4, 0, 4)
    assert (report.undecided_requests, report.decided_requests) == (1, 3)
    assert [(item.version, item.reason, item.requests) for item in report.undecided] == [
        ("draft", f"rule {SHORT_TASKS} reads task_type", 1),
        ("live", f"rule {SHORT_TASKS} reads task_type", 1),
    ]
    assert report.ledger_rows_without_hints == 1
    short, moved = line(report.rules, SHORT_TASKS), line(report.rules, "classification-on-large")
    assert (short.live_requests, short.draft_requests, short.live_cost_usd) == (1, 0, small_cost)
    assert (moved.live_requests, moved.draft_requests, moved.draft_cost_usd) == (0, 1, large_cost)
    assert line(report.rules, "enterprise-tier").live_cost_usd == enterprise
    assert line(report.rules, "otherwise-by-difficulty").draft_cost_usd == scored
    assert report.total.live_cost_usd == small_cost + enterprise + scored
    assert report.total.draft_cost_usd == large_cost + enterprise + scored
    assert report.total.difference_usd == large_cost - small_cost
    assert report.total.difference_pct == Decimal("10.4")  # 0.000658 / 0.0063545 = 10.35%
    # No shadow results: the moved request's quality change is unknown, and said so; the others keep their model.
    assert short.quality == moved.quality == "no shadow results (1 request changing model)"
    assert line(report.rules, "enterprise-tier").quality == "same model: no change"
    assert report.total.quality_change == {**short.quality_change, "basis": []}
    # The undecided request's recorded cost is in the ledger's total, not in the replay's.
    assert report.recorded_cost_usd == Decimal("0.5") + 3 * Decimal("0.0000198")


def test_identical_ledger_rows_are_replayed_as_one_group_and_counted_each(acme):
    tenant, key = acme
    for _ in range(3):
        record(
            key, task_type="summarization", prompt_tokens=80, prompt_tokens_before_compression=80, completion_tokens=20
        )

    report = whatif_replay(tenant=tenant, days=7, draft=classification_on_large(tenant))

    short = line(report.rules, SHORT_TASKS)
    assert (short.live_requests, short.draft_requests) == (3, 3)
    assert short.live_cost_usd == short.draft_cost_usd == 3 * (80 * Decimal("0.15") + 20 * Decimal("0.60")) / 10**6


def test_rows_whose_counts_route_alike_are_grouped_and_still_priced_on_their_own_tokens(acme):
    tenant, key = acme
    for tokens in (150, 160, 1300):
        record(
            key,
            task_type="classification",
            prompt_tokens=tokens,
            prompt_tokens_before_compression=tokens,
            completion_tokens=0,
            difficulty_score=10,
        )
    # A row with no token count at all: the default policy's first rule reads the count.
    record(key, task_type="classification", prompt_tokens=0, completion_tokens=0, cost_usd=0)

    report = whatif_replay(tenant=tenant, days=7)

    short, scored = line(report.rules, SHORT_TASKS), line(report.rules, "otherwise-by-difficulty")
    assert (short.live_requests, short.live_cost_usd) == (2, 310 * Decimal("0.15") / 10**6)
    # 1,300 tokens are over the short-tasks rule's 1,199: scored 10, under the threshold.
    assert (scored.live_requests, scored.live_cost_usd) == (1, 1300 * Decimal("0.15") / 10**6)
    assert [(item.reason, item.requests) for item in report.undecided] == [
        ("rule too-long-to-compress reads prompt_tokens", 1),
        ("rule too-long-to-compress reads prompt_tokens", 1),
    ]
    assert report.ledger_rows_without_prompt_tokens == 1


def test_a_payload_logged_request_is_scored_from_its_message_where_its_ledger_row_cannot_be(acme):
    tenant, key = acme
    draft = default_policy_document(small_model="acme-small", large_model="acme-large")
    draft["auto_threshold"] = 45
    hard = "First def solve(x): then prove the theorem step by step"
    for request_id, logged in (("req-logged", True), ("req-not-logged", False)):
        # Routed by the enterprise rule when served, so the ledger kept no difficulty score.
        record(
            key,
            request_id=request_id,
            user_tier="enterprise",
            prompt_tokens=200,
            prompt_tokens_before_compression=200,
            completion_tokens=10,
        )
        if logged:
            body = {"model": "auto", "messages": [{"role": "user", "content": hard}]}
            PayloadLog.objects.create(tenant=tenant, request_id=request_id, request=body)
    # The draft no longer knows the enterprise tier: its requests fall through to the difficulty score.
    draft["rules"] = [rule for rule in draft["rules"] if rule["name"] != "enterprise-tier"]

    report = whatif_replay(tenant=tenant, days=7, draft=draft)

    assert (report.from_payloads, report.from_ledger) == (1, 1)
    assert [(item.version, item.reason) for item in report.undecided] == [
        ("draft", "alias auto: the difficulty score reads the message")
    ]
    # Code, maths and multi-step: 2 + 20 + 15 + 15 = 52 points, over 45: the large model under the draft too.
    assert line(report.models, "acme-large").draft_requests == 1
    assert line(report.rules, "otherwise-by-difficulty").draft_requests == 1


def test_a_payload_log_of_an_old_row_gives_the_hints_its_metadata_carries_and_no_more(acme):
    tenant, key = acme
    record(key, request_id="req-old", has_tools=None, prompt_tokens=50, prompt_tokens_before_compression=50)
    body = {
        "model": "auto",
        "metadata": {"task_type": "classification"},
        "messages": [{"role": "user", "content": "a"}],
    }
    PayloadLog.objects.create(tenant=tenant, request_id="req-old", request=body)

    report = whatif_replay(tenant=tenant, days=7)

    assert report.from_payloads == 1 and report.undecided_requests == 0
    assert line(report.rules, SHORT_TASKS).live_requests == 1


def test_nothing_of_another_tenant_is_replayed_not_even_a_payload_log_with_the_same_request_id(acme):
    tenant, key = acme
    globex, globex_key = make_tenant("globex")
    record(
        key, request_id="shared-id", task_type="classification", prompt_tokens=10, prompt_tokens_before_compression=10
    )
    record(globex_key, request_id="globex-only", task_type="classification", prompt_tokens=10)
    PayloadLog.objects.create(
        tenant=globex, request_id="shared-id", request={"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    )

    report = whatif_replay(tenant=tenant, days=7)

    assert (report.replayed, report.from_payloads) == (1, 0)
    assert {item.label for item in report.models} == {"acme-small"}


def test_only_requests_routing_decided_inside_the_window_are_replayed(acme):
    tenant, key = acme
    record(key, task_type="classification", prompt_tokens=10, minutes_ago=60 * 24 * 8)
    record(key, task_type="classification", prompt_tokens=10, route="")  # refused before routing
    record(key, task_type="classification", prompt_tokens=10, kind="compression_summary")

    assert whatif_replay(tenant=tenant, days=7).replayed == 0
    assert whatif_replay(tenant=tenant, days=9).replayed == 1


@pytest.mark.parametrize("days", [0, 91])
def test_a_window_out_of_range_is_refused(acme, days):
    with pytest.raises(WhatIfRefused, match="1 to 90 days"):
        whatif_replay(tenant=acme[0], days=days)


def test_a_tenant_without_a_policy_has_no_draft_to_replay():
    with pytest.raises(WhatIfRefused, match="has no routing policy"):
        whatif_replay(tenant=TenantFactory(slug="bare"), days=7)


def test_a_draft_that_could_not_be_published_is_refused_with_its_reasons(acme):
    tenant, _ = acme
    draft = classification_on_large(tenant)
    draft["rules"][-1]["outcome"]["target_model"] = "globex-large"
    ModelFactory(name="globex-large")

    with pytest.raises(WhatIfRefused, match="target model 'globex-large' is not allowed for this tenant"):
        whatif_replay(tenant=tenant, days=7, draft=draft)
    with pytest.raises(WhatIfRefused, match="task_types must be a list of strings"):
        whatif_replay(
            tenant=tenant, days=7, draft={"rules": [{"priority": 1, "name": "x", "match": {"task_types": "a"}}]}
        )


def test_a_discounted_row_is_replayed_at_the_routed_models_batch_or_flex_share_and_at_list_without_flex_prices(acme):
    tenant, key = acme
    large = Model.objects.get(name="acme-large")
    large.batch_price_multiplier = Decimal("0.5")
    large.flex_price_multiplier = None
    large.save()
    tokens = {"prompt_tokens": 1000, "prompt_tokens_before_compression": 1000, "completion_tokens": 100}
    # Enterprise requests go to the large model under both versions.
    record(key, user_tier="enterprise", endpoint="/v1/batches", saved_batch_usd=Decimal("0.002"), **tokens)
    record(key, user_tier="enterprise", endpoint="/v1/chat/completions", saved_batch_usd=Decimal("0.002"), **tokens)
    record(key, user_tier="enterprise", endpoint="/v1/chat/completions", **tokens)
    list_cost = (1000 * Decimal("2.50") + 100 * Decimal("10.00")) / 1_000_000

    report = whatif_replay(tenant=tenant, days=7, draft=classification_on_large(tenant), draft_label="no flex prices")
    assert line(report.rules, "enterprise-tier").live_cost_usd == list_cost / 2 + 2 * list_cost

    large.flex_price_multiplier = Decimal("0.25")
    large.save()
    report = whatif_replay(tenant=tenant, days=7, draft=classification_on_large(tenant), draft_label="flex prices")
    assert line(report.rules, "enterprise-tier").live_cost_usd == list_cost / 2 + list_cost / 4 + list_cost
