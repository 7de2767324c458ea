"""Shadow evaluation through the live gateway (in this process, tasks run eagerly): which answers are sampled, on every
endpoint that runs the chat pipeline, and what an evaluation records: a verdict per (request, lever), a ledger row of
kind evaluation per call at the catalog's prices, the evaluation budget settled, product budgets untouched."""

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest

from billing.budgets.services import budget_counter_check, budget_create
from billing.ledger.costs import usage_cost
from billing.models import (
    CacheStatus,
    EvaluationSpend,
    JudgeMethod,
    Lever,
    UsageKind,
    UsageRecord,
)
from llmops.gateway.shadow import sampling
from llmops.gateway.shadow.samples import sample_seal
from llmops.gateway.shadow.tasks import shadow_evaluate_task
from llmops.mock_upstream import classification_answer
from routing.catalog import ModelPrices
from routing.policy.drafts import policy_draft_replace
from routing.services import (
    routing_policy_create,
    routing_policy_create_default,
    routing_policy_publish,
    tenant_model_access_set,
)
from tests.conftest import LARGE_PRICES
from tests.factories import ModelFactory
from tests.shadow.conftest import (
    CLASSIFY,
    LABELS,
    LABELS_LIST,
    chat,
    evaluation_on,
    evaluation_rows,
    evaluations,
    sample_of,
    ticket,
)


def test_a_routed_answer_is_replayed_on_the_baseline_judged_and_metered(gateway, routed, evaluated):
    evaluation_on(routed.tenant)
    budget = budget_create(tenant=routed.tenant, limit_usd=Decimal(10))

    response = chat(gateway, routed, {"model": "auto", "messages": ticket("I was charged twice"), **CLASSIFY})
    evaluated()

    request_id = response.headers["x-llmops-request-id"]
    (evaluation,) = evaluations()
    assert (evaluation.request_id, evaluation.lever, evaluation.rule) == (
        request_id,
        Lever.ROUTING,
        "short-classification-and-summaries",
    )
    assert (evaluation.served_model, evaluation.reference_model) == (routed.small.name, routed.large.name)
    assert (evaluation.task_type, evaluation.method, evaluation.agrees) == ("classification", JudgeMethod.EXACT, True)
    (row,) = evaluation_rows(request_id)
    assert (row.served_model, row.route, row.cache_status, row.api_key_id) == (
        routed.large.name,
        "shadow-evaluation",
        CacheStatus.BYPASS,
        routed.api_key.pk,
    )
    large = ModelPrices(*LARGE_PRICES)
    expected = usage_cost(
        prices=large, prompt_tokens=row.prompt_tokens, cached_tokens=0, completion_tokens=row.completion_tokens
    )
    assert row.cost_usd == expected == evaluation.cost_usd > 0
    assert row.price_version_id == routed.large.price_in_force().pk
    savings = (row.saved_routing_usd, row.saved_cache_usd, row.saved_compression_usd, row.saved_provider_cache_usd)
    assert savings == (0, 0, 0, 0)
    month = EvaluationSpend.objects.for_tenant(routed.tenant).get()
    assert (month.spent_usd, month.reserved_usd) == (row.cost_usd, 0)
    # The product budget counts the request, not its evaluation.
    request_cost = UsageRecord.objects.unscoped().get(request_id=request_id).cost_usd
    check = budget_counter_check(budget=budget, now=row.created_at)
    assert check.counted_usd == check.ledger_usd == request_cost


def test_a_wrong_small_model_is_found_out(gateway, acme, evaluated):
    wrong = ModelFactory(
        name="acme-small-wrong",
        provider=acme.small.provider,
        upstream_name="mock-small-wrong-50",
        **acme.small.price_in_force().prices(),
    )
    acme.tenant.model_access.allowed_models.add(wrong)
    routing_policy_create_default(tenant=acme.tenant, small_model=wrong, large_model=acme.large)
    evaluation_on(acme.tenant)

    for index in range(12):
        chat(gateway, acme, {"model": "auto", "messages": ticket(f"Ticket {index}: login fails"), **CLASSIFY})
    evaluated()

    verdicts = [evaluation.agrees for evaluation in evaluations(lever=Lever.ROUTING)]
    assert len(verdicts) == 12 and True in verdicts and False in verdicts


def test_a_streamed_answer_is_sampled_too_and_an_exact_cache_hit_is_not(gateway, routed, evaluated):
    """The miss that stored the answer was a candidate already: a repeat would count its verdict again."""
    evaluation_on(routed.tenant)
    body = {"model": "auto", "messages": ticket("Where is my invoice?"), "temperature": 0, **CLASSIFY}

    streamed = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, "messages": ticket("Where is my receipt?"), "stream": True},
        headers={"authorization": f"Bearer {routed.key}"},
        timeout=30,
    )
    missed = chat(gateway, routed, body)
    hit = chat(gateway, routed, body)
    evaluated()

    assert (streamed.headers["x-llmops-cache"], missed.headers["x-llmops-cache"]) == ("miss", "miss")
    assert hit.headers["x-llmops-cache"] == "hit-exact"
    request_ids = {r.headers["x-llmops-request-id"] for r in (streamed, missed)}
    assert {evaluation.request_id for evaluation in evaluations()} == request_ids
    assert all(evaluation.lever == Lever.ROUTING and evaluation.agrees for evaluation in evaluations())
    assert evaluation_rows(hit.headers["x-llmops-request-id"]) == []


def test_an_answer_a_fallback_gave_is_not_routing_s(gateway, routed, evaluated, tasks_run):
    """The enterprise rule routes to the large model; it fails and the small one answers, cheaper than the baseline,
    but not by routing's choice."""
    routed.large.upstream_name = "mock-large-fail-503"
    routed.large.save()
    evaluation_on(routed.tenant)
    body = {"model": "auto", "messages": [{"role": "user", "content": "Plan our migration"}], "max_tokens": 8}

    response = chat(gateway, routed, {**body, "metadata": {"user_tier": "enterprise"}})
    evaluated()

    assert response.headers["x-llmops-model"] == routed.small.name
    assert shadow_evaluate_task.name not in tasks_run
    assert evaluation_rows(response.headers["x-llmops-request-id"]) == []


def test_the_responses_and_messages_endpoints_are_sampled_through_the_same_pipeline(gateway, routed, evaluated):
    evaluation_on(routed.tenant)
    task = {"x-llmops-task-type": "classification"}

    responses = chat(
        gateway,
        routed,
        {"model": "auto", "instructions": f"Classify.\n{LABELS}", "input": "Card declined", "max_output_tokens": 16},
        "/v1/responses",
        **task,
    )
    messages = chat(
        gateway,
        routed,
        {"model": "auto", "system": f"Classify.\n{LABELS}", "messages": ticket("Reset link")[1:], "max_tokens": 5},
        "/v1/messages",
        **task,
    )
    evaluated()

    sampled = {evaluation.request_id: evaluation for evaluation in evaluations()}
    assert set(sampled) == {r.headers["x-llmops-request-id"] for r in (responses, messages)}
    assert all(evaluation.method == JudgeMethod.EXACT and evaluation.agrees for evaluation in sampled.values())


def test_a_downgraded_request_is_compared_with_the_route_s_model(gateway, acme, evaluated):
    evaluation_on(acme.tenant)
    budget_create(tenant=acme.tenant, limit_usd=Decimal("0.0001"), action="downgrade")
    body = {"model": acme.large.name, "messages": ticket("Refund please"), **CLASSIFY}

    response = chat(gateway, acme, body)
    evaluated()

    assert "budget-downgrade" in response.headers["x-llmops-route"]
    (evaluation,) = evaluations()
    assert (evaluation.lever, evaluation.served_model, evaluation.reference_model) == (
        Lever.BUDGET_DOWNGRADE,
        acme.small.name,
        acme.large.name,
    )
    assert "budget-downgrade" not in evaluation.rule


def test_a_compressed_prompt_is_compared_with_the_answer_to_the_whole_prompt(gateway, acme, evaluated):
    policy = routing_policy_create(tenant=acme.tenant)
    squeeze = {"priority": 1, "name": "squeeze", "outcome": {"prompt_token_cap": 120, "over_cap_action": "compress"}}
    policy_draft_replace(policy=policy, document={"aliases": {}, "rules": [squeeze]})
    routing_policy_publish(policy=policy, actor=None)
    evaluation_on(acme.tenant)
    history = []
    for turn in range(12):
        history += [
            {"role": "user", "content": f"Question {turn}: tell me about topic {turn} in detail."},
            {"role": "assistant", "content": f"Answer {turn}: topic {turn} is interesting " * 3},
        ]
    messages = [{"role": "system", "content": f"Classify the last question.\n{LABELS}"}, *history]
    messages.append({"role": "user", "content": "Which label fits my card problem?"})

    response = chat(gateway, acme, {"model": acme.small.name, "messages": messages, **CLASSIFY})
    evaluated()

    (evaluation,) = evaluations()
    assert (evaluation.lever, evaluation.reference_model, evaluation.agrees) == (
        Lever.COMPRESSION,
        acme.small.name,
        True,
    )
    request = UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])
    (reference,) = evaluation_rows(request.request_id)
    # The reference read the whole prompt: more than the compressed one the request sent.
    assert reference.prompt_tokens > request.prompt_tokens


def test_free_text_is_judged_by_embedding_similarity_or_by_the_judge_model(gateway, acme, evaluated):
    prices = acme.small.price_in_force().prices()
    judge = ModelFactory(name="acme-judge", provider=acme.small.provider, upstream_name="mock-judge", **prices)
    acme.tenant.model_access.allowed_models.add(judge)
    routing_policy_create_default(tenant=acme.tenant, small_model=acme.small, large_model=acme.large)
    settings = evaluation_on(acme.tenant)
    body = {"model": "auto", "messages": [{"role": "user", "content": "Say hello to the team"}], "max_tokens": 8}
    body["metadata"] = {"task_type": "summarization"}

    by_embedding = chat(gateway, acme, body)
    evaluated()
    settings.judge_model = judge
    settings.save()
    by_judge = chat(gateway, acme, body)
    evaluated()

    embedded = evaluations(request_id=by_embedding.headers["x-llmops-request-id"])[0]
    judged = evaluations(request_id=by_judge.headers["x-llmops-request-id"])[0]
    # The mock's answers quote the prompt the same way whatever the model: equal texts.
    assert (embedded.method, embedded.agrees) == (JudgeMethod.EMBEDDING, True) and embedded.similarity > 0.99
    assert (judged.method, judged.verdict, judged.agrees) == (JudgeMethod.LLM, "equivalent", True)
    # The judge's reason is encrypted at rest; only reason_text() reads it.
    assert judged.reason_text() == "The answers are the same." and "same" not in judged.reason_encrypted
    rows = evaluation_rows(judged.request_id)
    assert sorted(row.served_model for row in rows) == sorted([acme.large.name, judge.name])
    assert judged.cost_usd == sum(row.cost_usd for row in rows)


@pytest.mark.parametrize("judge_by", ["embedding", "llm"])
def test_free_text_answers_that_differ_are_judged_to_disagree(gateway, acme, evaluated, judge_by):
    """A small model that always picks another label, on a task judged as free text: the embedding judge finds the
    two labels apart, the LLM judge (the mock's) calls the cheaper one worse and says why."""
    prices = acme.small.price_in_force().prices()
    wrong = ModelFactory(
        name="acme-small-wrong", provider=acme.small.provider, upstream_name="mock-small-wrong-100", **prices
    )
    judge = ModelFactory(name="acme-judge", provider=acme.small.provider, upstream_name="mock-judge", **prices)
    acme.tenant.model_access.allowed_models.add(wrong, judge)
    routing_policy_create_default(tenant=acme.tenant, small_model=wrong, large_model=acme.large)
    evaluation_on(acme.tenant, judge_model=judge if judge_by == "llm" else None)
    messages = ticket("My card was charged twice for one order")
    body = {"model": "auto", "messages": messages, "max_tokens": 5, "metadata": {"task_type": "summarization"}}

    response = chat(gateway, acme, body)
    evaluated()

    served, reference = (classification_answer(messages, LABELS_LIST, model) for model in ("wrong-100", "mock-large"))
    assert served != reference and response.json()["choices"][0]["message"]["content"] == served
    (evaluation,) = evaluations()
    assert (evaluation.lever, evaluation.served_model, evaluation.agrees) == (Lever.ROUTING, wrong.name, False)
    if judge_by == "embedding":
        assert evaluation.method == JudgeMethod.EMBEDDING
        assert evaluation.similarity < float(acme.tenant.evaluation_settings.similarity_threshold)
    else:
        assert (evaluation.method, evaluation.verdict) == (JudgeMethod.LLM, "worse")
        assert evaluation.reason_text() == "The candidate differs from the reference."


def test_an_evaluation_the_budget_cannot_cover_is_refused_and_costs_nothing(gateway, routed, evaluated):
    evaluation_on(routed.tenant, budget="0.0000001")

    chat(gateway, routed, {"model": "auto", "messages": ticket("Charged twice"), **CLASSIFY})
    evaluated()

    assert evaluations() == []
    assert not UsageRecord.objects.unscoped().filter(kind=UsageKind.EVALUATION).exists()
    month = EvaluationSpend.objects.for_tenant(routed.tenant).get()
    assert (month.spent_usd, month.reserved_usd, month.refused, month.unjudged) == (0, 0, 1, 0)


def test_a_failed_reference_call_is_metered_and_leaves_no_verdict(gateway, routed, evaluated):
    routed.large.upstream_name = "mock-large-fail-503"
    routed.large.save()
    evaluation_on(routed.tenant)

    request = chat(gateway, routed, {"model": "auto", "messages": ticket("Charged twice"), **CLASSIFY})
    evaluated()

    assert evaluations() == []
    (row,) = evaluation_rows(request.headers["x-llmops-request-id"])
    assert (row.http_status, row.error_code, row.cost_usd) == (502, "upstream_error", 0)
    month = EvaluationSpend.objects.for_tenant(routed.tenant).get()
    assert (month.spent_usd, month.reserved_usd, month.unjudged) == (0, 0, 1)


def test_without_an_embedder_nothing_is_paid_for_and_the_outcome_is_counted(gateway, acme, evaluated, settings):
    settings.LLMOPS_CACHE_EMBEDDER = "routing.cache.embedders.NoSuchEmbedder"
    routing_policy_create_default(tenant=acme.tenant, small_model=acme.small, large_model=acme.large)
    evaluation_on(acme.tenant)
    body = {"model": "auto", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}

    chat(gateway, acme, {**body, "metadata": {"task_type": "summarization"}})
    evaluated()

    assert evaluations() == []
    assert not UsageRecord.objects.unscoped().filter(kind=UsageKind.EVALUATION).exists()
    assert EvaluationSpend.objects.for_tenant(acme.tenant).get().unjudged == 1


@pytest.mark.parametrize("settings_state", ["none", "disabled", "no_budget", "rate_zero"])
def test_a_tenant_that_does_not_evaluate_hands_nothing_over(gateway, routed, evaluated, tasks_run, settings_state):
    if settings_state != "none":
        evaluation_on(
            routed.tenant,
            budget="0" if settings_state == "no_budget" else "1",
            routing=0 if settings_state == "rate_zero" else 1,
        )
    if settings_state == "disabled":
        routed.tenant.evaluation_settings.enabled = False
        routed.tenant.evaluation_settings.save()

    chat(gateway, routed, {"model": "auto", "messages": ticket("Charged twice"), **CLASSIFY})
    evaluated()

    assert shadow_evaluate_task.name not in tasks_run
    assert evaluations() == []
    assert not EvaluationSpend.objects.for_tenant(routed.tenant).exists()


def test_settings_saved_apply_to_the_next_request_of_a_warm_process(gateway, routed, evaluated):
    body = {"model": "auto", "messages": ticket("Charged twice"), **CLASSIFY}
    chat(gateway, routed, body)
    settings = evaluation_on(routed.tenant)

    sampled = chat(gateway, routed, body)
    evaluated()
    # A rate of 0, not evaluation off: a request sampled on stale settings would still be evaluated, and seen.
    settings.routing_sample_rate = 0
    settings.save()
    chat(gateway, routed, body)
    evaluated()

    # Only the request made while the rate was 1: the one before and the one after were not sampled.
    assert [e.request_id for e in evaluations()] == [sampled.headers["x-llmops-request-id"]]


def test_the_task_signal_sees_a_sampled_request(gateway, routed, evaluated, tasks_run):
    """The signal the test above reads does see a hand-over."""
    evaluation_on(routed.tenant)

    chat(gateway, routed, {"model": "auto", "messages": ticket("Charged twice"), **CLASSIFY})
    evaluated()

    assert tasks_run.count(shadow_evaluate_task.name) == 1


def test_a_model_the_key_may_not_use_is_neither_a_reference_nor_a_saving(gateway, acme, evaluated):
    """A rule that ignores the model named answers a request naming a model the tenant was never granted: that model
    is no routing baseline, so nothing calls it and no saving is priced against it."""
    forbidden = ModelFactory(
        name="forbidden-pro",
        provider=acme.large.provider,
        upstream_name="mock-large",
        input_price_per_million=Decimal(150),
        output_price_per_million=Decimal(600),
    )
    policy = routing_policy_create(tenant=acme.tenant)
    rule = {
        "priority": 1,
        "name": "classification-small",
        "match": {"task_types": ["classification"]},
        "outcome": {"target_model": acme.small.name},
    }
    policy_draft_replace(policy=policy, document={"aliases": {}, "rules": [rule]})
    routing_policy_publish(policy=policy, actor=None)
    evaluation_on(acme.tenant)

    response = chat(gateway, acme, {"model": forbidden.name, "messages": ticket("Charged twice"), **CLASSIFY})
    evaluated()

    assert response.headers["x-llmops-model"] == acme.small.name
    assert evaluations() == []
    assert not UsageRecord.objects.unscoped().filter(kind=UsageKind.EVALUATION).exists()
    request = UsageRecord.objects.unscoped().get(request_id=response.headers["x-llmops-request-id"])
    assert request.saved_routing_usd == 0


@pytest.mark.parametrize("revoked", ["reference", "judge"])
def test_a_reference_or_judge_the_tenant_may_no_longer_use_is_not_called(
    gateway, acme, mock_upstream, evaluated, revoked
):
    judge = ModelFactory(name="acme-judge", provider=acme.small.provider, upstream_name="mock-judge")
    acme.tenant.model_access.allowed_models.add(judge)
    evaluation_on(acme.tenant, judge_model=judge)
    # Granted when the request was sampled, revoked before the worker ran it.
    still_allowed = [acme.small, judge] if revoked == "reference" else [acme.small, acme.large]
    tenant_model_access_set(tenant=acme.tenant, allowed_models=still_allowed, default_model=acme.small)
    sample = sample_of(acme, levers={"routing": acme.large.name}, task_type="summarization")
    calls_before = mock_upstream.app.requests_served

    shadow_evaluate_task(sample_seal(sample))
    evaluated()

    assert mock_upstream.app.requests_served == calls_before
    assert evaluations() == []
    assert not UsageRecord.objects.unscoped().filter(kind=UsageKind.EVALUATION).exists()
    month = EvaluationSpend.objects.for_tenant(acme.tenant).get()
    assert (month.unjudged, month.spent_usd, month.reserved_usd) == (1, 0, 0)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_sampler_that_fails_never_fails_the_request_it_samples(
    gateway, routed, evaluated, monkeypatch, caplog, stream
):
    """A process shutting down refuses new work (submit raises): the billed answer still reaches the client whole."""
    stopped = ThreadPoolExecutor(max_workers=1)
    stopped.shutdown()
    monkeypatch.setattr(sampling, "_enqueue_executor", stopped)
    evaluation_on(routed.tenant)

    response = chat(
        gateway, routed, {"model": "auto", "messages": ticket("Charged twice"), **CLASSIFY, "stream": stream}
    )
    evaluated()

    if stream:
        assert response.text.rstrip().endswith("data: [DONE]") and '"error"' not in response.text
    else:
        assert response.json()["choices"][0]["message"]["content"]
    assert evaluations() == []
    (failure,) = [record for record in caplog.records if record.name == sampling.logger.name]
    assert failure.exc_info is not None and response.headers["x-llmops-request-id"] in failure.getMessage()


def test_a_flex_requests_reference_is_charged_the_flex_share_and_saves_nothing(gateway, routed, evaluated):
    routed.large.flex_price_multiplier = Decimal("0.5")
    routed.large.save(update_fields=["flex_price_multiplier"])
    evaluation_on(routed.tenant)

    body = {"model": "auto", "messages": ticket("I was charged twice"), "service_tier": "flex", **CLASSIFY}
    response = chat(gateway, routed, body)
    evaluated()

    (row,) = evaluation_rows(response.headers["x-llmops-request-id"])
    list_cost = usage_cost(
        prices=ModelPrices(*LARGE_PRICES),
        prompt_tokens=row.prompt_tokens,
        cached_tokens=0,
        completion_tokens=row.completion_tokens,
    )
    assert row.cost_usd == list_cost / 2 > 0
    assert row.saved_batch_usd == 0
    month = EvaluationSpend.objects.for_tenant(routed.tenant).get()
    assert month.spent_usd == row.cost_usd
