"""Shadow evaluations written directly, as the shadow-evaluation runner would: the quality reports and SLOs read
only these rows."""

from datetime import datetime

import factory
from django.utils import timezone

from billing.models import JudgeMethod, Lever, ShadowEvaluation


class ShadowEvaluationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ShadowEvaluation

    request_id = factory.Sequence(lambda n: f"sampled-{n}")
    lever = Lever.ROUTING
    rule = "short-tasks"
    served_model = "m-small"
    reference_model = "m-large"
    task_type = "classification"
    method = JudgeMethod.EXACT
    agrees = True
    created_at = factory.LazyFunction(timezone.now)


def evaluations(tenant, *, agreeing: int, disagreeing: int, at: datetime | None = None, **fields) -> None:
    """`agreeing` evaluations that agreed and `disagreeing` that did not, all alike otherwise."""
    moment = at or timezone.now()
    ShadowEvaluationFactory.create_batch(agreeing, tenant=tenant, agrees=True, created_at=moment, **fields)
    ShadowEvaluationFactory.create_batch(disagreeing, tenant=tenant, agrees=False, created_at=moment, **fields)
