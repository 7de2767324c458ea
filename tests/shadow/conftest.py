from decimal import Decimal

import pytest

from billing.models import EvaluationSettings, Lever
from llmops.gateway.shadow.sampling import shadow_samples_wait


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
