"""Quality SLOs in production shape (issue #18's first "must show"): a uvicorn gateway process samples the requests its
policy routed to the small model, a real Celery worker (tests/shadow/test_shadow_live.py's) replays them on the mock
upstream over loopback HTTP, judges them and checks the tenant's SLO after each verdict, in Postgres and Redis.

A small model that gets a fifth of the labels wrong is found out within the interval, breaches the SLO once (one
alert, one signed webhook delivery, however many checks follow), and the SLO's action publishes a policy version that
the running gateway applies at once: the rule's next requests are served by the large model. A small model that is
never wrong raises nothing and changes nothing."""

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from billing.alerts.services import alert_channel_create
from billing.models import (
    AlertDelivery,
    ChannelKind,
    DeliveryStatus,
    JudgeMethod,
    Lever,
    QualityAction,
    QualityAlert,
    QualitySlo,
    ShadowEvaluation,
    UsageKind,
    UsageRecord,
)
from billing.quality.selectors import agreement_of
from billing.quality.services import quality_slo_create, slo_actor_name, slo_holds
from core.webhooks import webhook_secret_new
from llmops.mock_upstream import classification_answer
from routing.models import RoutingPolicy, RoutingPolicyAudit
from routing.services import SHORT_TASKS_RULE
from tenants.models import AuditEvent
from tests.conftest import TenantSetup
from tests.shadow.conftest import evaluation_on
from tests.shadow.test_shadow_live import (  # noqa: F401  (gateway_url and worker are fixtures)
    CONCURRENCY,
    LABELS,
    gateway_url,
    tenant_routing_classification_to,
    ticket,
    wait_until,
    worker,
)
from tests.webhooks import assert_verified_and_not_forgeable

pytestmark = pytest.mark.live

# At a minimum of 95%, even a record of nothing but agreements has a Wilson lower bound under it until n = 73 (40 of 40
# is 91.2%): fewer samples would breach the SLO of a model that is never wrong.
MIN_SAMPLES = 80
# Enough that the SLO's checks go on past its breach (the evaluations lag the requests), to show they raise nothing.
REQUESTS = 100
REQUESTS_AFTER_THE_ACTION = 20
WAIT_SECONDS = 60


@dataclass(frozen=True)
class Answer:
    request_id: str
    index: int
    model: str
    route: str


@dataclass
class Guarded:
    """A tenant routing classification to its small model, shadow-evaluated, its rule under a quality SLO."""

    setup: TenantSetup
    slo: QualitySlo
    webhook_secret: str

    @property
    def tenant_id(self) -> int:
        return self.setup.tenant.pk


def guarded_tenant(small_upstream: str, *, slug: str, upstream_url: str, receiver_url: str) -> Guarded:
    setup = tenant_routing_classification_to(small_upstream, slug, upstream_url)
    evaluation_on(setup.tenant, routing=1)
    slo = quality_slo_create(
        tenant=setup.tenant,
        lever=Lever.ROUTING,
        rule=SHORT_TASKS_RULE,
        min_agreement=Decimal("0.95"),
        min_samples=MIN_SAMPLES,
        action=QualityAction.ROUTE_TO_LARGE,
    )
    secret = webhook_secret_new()
    alert_channel_create(
        tenant=setup.tenant,
        name="on-call hook",
        kind=ChannelKind.WEBHOOK,
        target=f"{receiver_url}/hooks/quality",
        signing_secret=secret,
    )
    return Guarded(setup=setup, slo=slo, webhook_secret=secret)


async def classify(url: str, setup: TenantSetup, indexes: range) -> list[Answer]:
    """The tickets classified through the gateway, CONCURRENCY at a time, with the model and route that answered."""
    limit = asyncio.Semaphore(CONCURRENCY)
    headers = {"authorization": f"Bearer {setup.key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

        async def one(index: int) -> Answer:
            body = {"model": "auto", "messages": ticket(index), "max_tokens": 5}
            body["metadata"] = {"task_type": "classification"}
            async with limit:
                response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            headers = response.headers
            return Answer(headers["x-llmops-request-id"], index, headers["x-llmops-model"], headers["x-llmops-route"])

        return list(await asyncio.gather(*(one(index) for index in indexes)))


def evaluations_of(guarded: Guarded):
    return ShadowEvaluation.objects.for_tenant(guarded.tenant_id)


def checks_settled(guarded: Guarded) -> QualitySlo:
    """The SLO once every check holding its row lock has committed. Called when the last evaluation is in: a check
    that takes the lock later counts every evaluation, as this test then does, and comes to the same verdict."""
    with transaction.atomic():
        return QualitySlo.objects.for_tenant(guarded.tenant_id).select_for_update().get(pk=guarded.slo.pk)


def rule_agreement(guarded: Guarded, since):
    return agreement_of(
        tenant_id=guarded.tenant_id,
        start=since,
        end=timezone.now() + timedelta(seconds=1),
        lever=Lever.ROUTING,
        rule=SHORT_TASKS_RULE,
    )


def live_policy(guarded: Guarded) -> RoutingPolicy:
    return RoutingPolicy.objects.for_tenant(guarded.tenant_id).select_related("live_version").get()


def mock_agrees(index: int, small_upstream: str) -> bool:
    return classification_answer(ticket(index), LABELS, small_upstream) == classification_answer(
        ticket(index), LABELS, "mock-large"
    )


def test_a_small_model_wrong_on_a_fifth_of_labels_breaches_once_and_its_rule_moves_to_large(
    gateway_url,  # noqa: F811
    mock_upstream,
    ledger_drainer,
    receiver,
):
    guarded = guarded_tenant(
        "mock-small-wrong-20", slug="acme", upstream_url=mock_upstream.url, receiver_url=receiver.url
    )
    small, large = guarded.setup.small.name, guarded.setup.large.name
    first_version = live_policy(guarded).live_version
    since = timezone.now() - timedelta(seconds=1)

    answers = asyncio.run(classify(gateway_url, guarded.setup, range(REQUESTS)))

    # Each answer of the small model is a routing sample (rate 1); any after the action came from the large one.
    by_small = [answer for answer in answers if answer.model == small]
    assert {answer.model for answer in answers} <= {small, large}
    wait_until(
        lambda: evaluations_of(guarded).count() == len(by_small),
        timeout=WAIT_SECONDS,
        what=f"the {len(by_small)} answers of the small model evaluated",
    )
    slo = checks_settled(guarded)

    # Every verdict is the mock's, and the agreement's interval holds the model's 80%.
    assert sorted(evaluations_of(guarded).values_list("request_id", flat=True)) == sorted(
        answer.request_id for answer in by_small
    )
    assert set(evaluations_of(guarded).values_list("method", "served_model", "reference_model")) == {
        (JudgeMethod.EXACT, small, large)
    }
    agreement = rule_agreement(guarded, since)
    assert agreement.samples == len(by_small) >= MIN_SAMPLES
    assert agreement.agreeing == sum(mock_agrees(answer.index, "mock-small-wrong-20") for answer in by_small)
    assert agreement.lower <= Decimal("0.80") <= agreement.upper, agreement.describe()

    # One breach, one alert, though every evaluation after it was checked too.
    alerts = list(QualityAlert.objects.for_tenant(guarded.tenant_id))
    assert len(alerts) == 1, f"{len(alerts)} alerts raised for one breach"
    [alert] = alerts
    assert slo.breached_at is not None and alert.slo_id == slo.pk
    assert MIN_SAMPLES <= alert.samples < agreement.samples, (
        f"the breach came on the last evaluation ({alert.samples} of {agreement.samples}): no check ran after it"
    )
    assert alert.lower_bound < slo.min_agreement
    assert alert.action_taken == QualityAction.ROUTE_TO_LARGE

    # The action published a version whose rule targets the large model, as the system, naming the SLO.
    policy = live_policy(guarded)
    version = policy.live_version
    assert version.number == first_version.number + 1
    [rule] = [rule for rule in version.document["rules"] if rule["name"] == SHORT_TASKS_RULE]
    assert (rule["outcome"]["target_model"], rule["outcome"]["fallback_models"][-1]) == (large, small)
    assert alert.action_detail == (
        f"Published routing policy version {version.number}: rule {SHORT_TASKS_RULE}: target {small} -> {large}."
    )
    audit = RoutingPolicyAudit.objects.for_tenant(guarded.tenant_id).get(version=version)
    assert (audit.actor, audit.previous_version_id) == (None, first_version.pk)
    assert audit.note.startswith(f"{slo_actor_name(slo)} breached: ")
    published = AuditEvent.objects.for_tenant(guarded.tenant_id).get(
        object_type="routing.routingpolicyversion", object_id=str(version.pk)
    )
    assert (published.actor, published.actor_name) == (None, slo_actor_name(slo))

    # One delivery of the breach, to the webhook, signed.
    wait_until(
        lambda: AlertDelivery.objects.for_tenant(guarded.tenant_id).filter(status=DeliveryStatus.SENT).exists(),
        timeout=WAIT_SECONDS,
        what="the quality alert delivered to the webhook",
    )
    [landed] = receiver.app.received
    payload = assert_verified_and_not_forgeable(Webhook(guarded.webhook_secret), landed.body, landed.headers)
    assert (payload["type"], payload["alert_id"], payload["slo"]["id"]) == ("quality.slo_breached", alert.pk, slo.pk)
    assert (payload["samples"], payload["action_taken"]) == (alert.samples, QualityAction.ROUTE_TO_LARGE)

    # The running gateway serves the rule's next requests on the large model, under the new version; nothing of
    # theirs is sampled (no cheaper model served them), and no second alert goes out.
    after = asyncio.run(classify(gateway_url, guarded.setup, range(REQUESTS, REQUESTS + REQUESTS_AFTER_THE_ACTION)))
    assert {answer.model for answer in after} == {large}
    assert {answer.route for answer in after} == {f"rule={SHORT_TASKS_RULE} model={large} policy=v{version.number}"}
    ledger_drainer.wait_drained()
    rows = UsageRecord.objects.for_tenant(guarded.tenant_id).filter(request_id__in=[a.request_id for a in after])
    assert sorted(rows.values_list("kind", "served_model", "route", "policy_version")) == [
        (UsageKind.REQUEST, large, SHORT_TASKS_RULE, version.number)
    ] * len(after)
    assert evaluations_of(guarded).count() == len(by_small)
    assert QualityAlert.objects.for_tenant(guarded.tenant_id).count() == 1
    assert AlertDelivery.objects.for_tenant(guarded.tenant_id).count() == 1
    assert len(receiver.app.received) == 1


def test_a_small_model_that_is_never_wrong_raises_nothing_and_changes_nothing(
    gateway_url,  # noqa: F811
    mock_upstream,
    ledger_drainer,
    receiver,
):
    guarded = guarded_tenant("mock-small", slug="globex", upstream_url=mock_upstream.url, receiver_url=receiver.url)
    first_version = live_policy(guarded).live_version
    since = timezone.now() - timedelta(seconds=1)

    answers = asyncio.run(classify(gateway_url, guarded.setup, range(REQUESTS)))

    assert {answer.model for answer in answers} == {guarded.setup.small.name}
    wait_until(
        lambda: evaluations_of(guarded).count() == len(answers),
        timeout=WAIT_SECONDS,
        what=f"the {len(answers)} answers of the small model evaluated",
    )
    slo = checks_settled(guarded)

    agreement = rule_agreement(guarded, since)
    assert (agreement.agreeing, agreement.samples) == (len(answers), len(answers))
    assert all(mock_agrees(answer.index, "mock-small") for answer in answers)
    assert slo_holds(slo=slo, agreement=agreement), agreement.describe()
    assert slo.breached_at is None
    assert not QualityAlert.objects.for_tenant(guarded.tenant_id).exists()
    assert not AlertDelivery.objects.for_tenant(guarded.tenant_id).exists()
    assert receiver.app.received == []
    assert live_policy(guarded).live_version == first_version
    assert not RoutingPolicyAudit.objects.for_tenant(guarded.tenant_id).exclude(version=first_version).exists()
