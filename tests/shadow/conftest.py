from decimal import Decimal

import httpx
import pytest
from celery.signals import task_prerun

from billing.models import EvaluationSettings, Lever, ShadowEvaluation, UsageKind, UsageRecord
from llmops.gateway.shadow.samples import ShadowSample
from llmops.gateway.shadow.sampling import shadow_samples_wait
from routing.services import routing_policy_create_default

LABELS_LIST = ["billing", "technical", "account"]
LABELS = f"Labels: {', '.join(LABELS_LIST)}"


@pytest.fixture
def eager_evaluation():
    """Sampled requests are evaluated in the gateway's process, on the thread that hands them to Celery; each test
    waits for them (``evaluated``) before it reads the results."""
    from llmops.celery import app

    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield
    shadow_samples_wait()
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


@pytest.fixture
def evaluated(eager_evaluation, ledger_drainer):
    """Wait until every sample handed over so far is evaluated and its ledger rows are in Postgres."""

    def wait() -> None:
        shadow_samples_wait()
        ledger_drainer.wait_drained()

    return wait


def evaluation_on(tenant, *, budget: str = "1", judge_model=None, **rates) -> EvaluationSettings:
    """Evaluation on for ``tenant``: every lever at rate 1 unless ``rates`` says otherwise."""
    sample_rates = {f"{lever.value}_sample_rate": Decimal(1) for lever in Lever}
    sample_rates |= {f"{lever}_sample_rate": Decimal(str(rate)) for lever, rate in rates.items()}
    return EvaluationSettings.objects.create(
        tenant=tenant, enabled=True, monthly_budget_usd=Decimal(budget), judge_model=judge_model, **sample_rates
    )


def ticket(text: str) -> list[dict]:
    return [{"role": "system", "content": f"Classify the ticket.\n{LABELS}"}, {"role": "user", "content": text}]


def sample_of(
    setup,
    *,
    levers: dict[str, str],
    task_type: str = "classification",
    text: str = "Charged twice",
    request_id: str = "req_sampled",
    answer: str = "billing",
) -> ShadowSample:
    """A sample as the request path hands it over: a ticket the setup's small model answered with ``answer``."""
    return ShadowSample(
        request_id=request_id,
        tenant_id=setup.tenant.pk,
        team_id=setup.team.pk,
        api_key_id=setup.api_key.pk,
        served_model=setup.small.name,
        rule="short-classification-and-summaries",
        task_type=task_type,
        levers=levers,
        body={"model": setup.small.upstream_name, "messages": ticket(text), "max_tokens": 5},
        answer=answer,
    )


CLASSIFY = {"metadata": {"task_type": "classification"}, "max_tokens": 5}


def chat(gateway, setup, body: dict, path: str = "/v1/chat/completions", **headers) -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}{path}", json=body, headers={"authorization": f"Bearer {setup.key}", **headers}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


@pytest.fixture
def routed(acme):
    """The default policy: classification to the small model, the alias `auto` with the large one as its baseline;
    deterministic answers cached."""
    routing_policy_create_default(
        tenant=acme.tenant, small_model=acme.small, large_model=acme.large, cache_ttl_seconds=300
    )
    return acme


@pytest.fixture
def tasks_run():
    """The names of the Celery tasks that ran (Celery's own signal)."""
    names: list[str] = []

    def ran(sender=None, **kwargs):
        names.append(sender.name)

    task_prerun.connect(ran, weak=False)
    yield names
    task_prerun.disconnect(ran)


def evaluations(**filters) -> list[ShadowEvaluation]:
    return list(ShadowEvaluation.objects.unscoped().filter(**filters).order_by("created_at"))


def evaluation_rows(parent: str) -> list[UsageRecord]:
    return list(UsageRecord.objects.unscoped().filter(kind=UsageKind.EVALUATION, parent_request_id=parent))
