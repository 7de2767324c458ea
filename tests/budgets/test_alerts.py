import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from moto import mock_aws
from standardwebhooks import Webhook, WebhookVerificationError

from billing.alerts.channels import sns_subject
from billing.alerts.services import (
    LOWER_THRESHOLD_WAIT,
    AlertNotYet,
    alert_channel_create,
    alert_delivery_attempt,
    alert_delivery_message_id,
)
from billing.alerts.tasks import ALERT_DELIVERY_MAX_RETRIES, budget_threshold_alert
from billing.budgets import thresholds
from billing.budgets.index import build_budget_index
from billing.budgets.reservations import BudgetExceeded, budget_reserve, reservation_settle
from billing.budgets.services import budget_create
from billing.budgets.thresholds import threshold_alerts_wait
from billing.models import AlertChannel, AlertDelivery, BudgetAlert, BudgetScope, ChannelKind, DeliveryStatus
from core.webhooks import webhook_secret_new
from tests.loops import run
from tests.webhooks import assert_verified_and_not_forgeable

UNITS = 10**10


def test_email_alert_is_sent_exactly_once_under_duplicated_and_retried_tasks(live_org, mailoutbox):
    channel = alert_channel_create(
        tenant=live_org.tenant, name="on-call", kind=ChannelKind.EMAIL, target="oncall@example.com"
    )
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal("100"), channels=[channel], thresholds=[80, 100])
    # Many replicas noticed the same crossing at once, and the broker redelivered some of their tasks.
    threads = [
        threading.Thread(target=budget_threshold_alert, args=(budget.pk, "2026-11", 80, 81 * UNITS)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    budget_threshold_alert(budget.pk, "2026-11", 80, 82 * UNITS)
    assert BudgetAlert.objects.unscoped().filter(budget=budget).count() == 1
    assert AlertDelivery.objects.unscoped().get().status == DeliveryStatus.SENT
    assert len(mailoutbox) == 1
    assert "80%" in mailoutbox[0].subject
    assert "$81.00 of $100.00" in mailoutbox[0].body
    # The next period, or the next threshold, is a new alert.
    budget_threshold_alert(budget.pk, "2026-12", 80, 81 * UNITS)
    budget_threshold_alert(budget.pk, "2026-11", 100, 100 * UNITS)
    assert len(mailoutbox) == 3


def test_slack_alert_posts_json_text(org, receiver, django_capture_on_commit_callbacks):
    app, url = receiver
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[channel])
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 50, 5 * UNITS)
    [request] = app.received
    assert request.path == "/slack"
    assert "budget at 50%" in json.loads(request.body)["text"]


def test_a_customer_id_in_a_slack_alert_is_shown_as_written_never_a_mention_or_a_link(
    org, receiver, django_capture_on_commit_callbacks
):
    """The request's customer (anyone's choice) is named in the alert: Slack's <...> markup in it is escaped."""
    app, url = receiver
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, scope="customer", limit_usd=Decimal("10"), channels=[channel])
    customer = "<!channel> & <https://evil.example|llmops>"
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 50, 5 * UNITS, customer)
    [request] = app.received
    text = json.loads(request.body)["text"]
    assert "customer &lt;!channel&gt; &amp; &lt;https://evil.example|llmops&gt;;" in text
    assert "<" not in text and ">" not in text


def test_webhook_is_signed_and_retried_until_it_lands(org, receiver, django_capture_on_commit_callbacks):
    app, url = receiver
    app.statuses.extend([500, 503])
    channel = alert_channel_create(
        tenant=org.tenant, name="hook", kind=ChannelKind.WEBHOOK, target=f"{url}/hook", signing_secret="s3cret"
    )
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[channel], thresholds=[80])
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 80, 8 * UNITS)
    delivery = AlertDelivery.objects.unscoped().get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SENT, 3)
    assert "503" in delivery.last_error
    assert len(app.received) == 3
    landed = app.received[-1]
    # A secret typed as text is the key's bytes, as it was before webhooks moved to Standard Webhooks.
    payload = assert_verified_and_not_forgeable(Webhook(b"s3cret"), landed.body, landed.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(b"other").verify(landed.body, landed.headers)
    # Every attempt of the delivery is one message to the receiver, which drops the ones it has seen.
    assert {hook.headers["webhook-id"] for hook in app.received} == {alert_delivery_message_id(delivery)}
    assert (payload["type"], payload["threshold_percent"], payload["spent_usd"]) == (
        "budget.threshold",
        80,
        "8.0000000000",
    )


def test_webhook_with_a_standard_webhooks_secret_verifies_with_it(org, receiver, django_capture_on_commit_callbacks):
    app, url = receiver
    secret = webhook_secret_new()
    channel = alert_channel_create(
        tenant=org.tenant, name="hook", kind=ChannelKind.WEBHOOK, target=f"{url}/hook", signing_secret=secret
    )
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[channel], thresholds=[80])
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 80, 8 * UNITS)
    [landed] = app.received
    payload = assert_verified_and_not_forgeable(Webhook(secret), landed.body, landed.headers)
    assert (payload["type"], payload["threshold_percent"]) == ("budget.threshold", 80)


def test_a_delivery_that_never_lands_is_marked_failed_with_its_error(org, receiver, django_capture_on_commit_callbacks):
    app, url = receiver
    app.statuses.extend([500] * (ALERT_DELIVERY_MAX_RETRIES + 5))
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/down")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[channel])
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 50, 5 * UNITS)
    delivery = AlertDelivery.objects.unscoped().get()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == ALERT_DELIVERY_MAX_RETRIES + 1
    assert "answered 500" in delivery.last_error
    # A Slack webhook URL is a credential; every member of the tenant may read the delivery's error.
    assert f"{url}/down" not in delivery.last_error
    assert "[API_KEY]" in delivery.last_error


def test_a_lower_threshold_stuck_pending_holds_a_higher_one_back_only_for_a_while(org, receiver):
    """The 100% page waits for the 50% alert to the same channel while that one is on its way, not for ever: a
    lower delivery whose task was lost would otherwise cost it every retry."""
    app, url = receiver
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[channel], thresholds=[50, 100])
    budget_threshold_alert(budget.pk, "2026-11", 50, 5 * UNITS)  # its delivery's task never runs
    budget_threshold_alert(budget.pk, "2026-11", 100, 10 * UNITS)
    deliveries = {delivery.budget_alert.threshold: delivery for delivery in AlertDelivery.objects.unscoped().all()}

    with pytest.raises(AlertNotYet):
        alert_delivery_attempt(delivery_id=deliveries[100].pk)
    AlertDelivery.objects.unscoped().filter(pk=deliveries[50].pk).update(
        created_at=timezone.now() - LOWER_THRESHOLD_WAIT - timedelta(seconds=1)
    )
    alert_delivery_attempt(delivery_id=deliveries[100].pk)

    [request] = app.received
    assert "100%" in json.loads(request.body)["text"].split("\n")[0]
    assert AlertDelivery.objects.unscoped().get(pk=deliveries[100].pk).status == DeliveryStatus.SENT


def test_the_admin_retries_a_failed_delivery_and_not_a_sent_one(
    org, receiver, admin_client, django_capture_on_commit_callbacks
):
    app, url = receiver
    app.statuses.extend([500] * (ALERT_DELIVERY_MAX_RETRIES + 1))
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[channel], thresholds=[50, 80])
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 50, 5 * UNITS)
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 80, 8 * UNITS)
    failed = AlertDelivery.objects.unscoped().get(budget_alert__threshold=50, status=DeliveryStatus.FAILED)
    sent = AlertDelivery.objects.unscoped().get(budget_alert__threshold=80, status=DeliveryStatus.SENT)
    app.received.clear()

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            "/admin/billing/alertdelivery/",
            {"action": "retry_deliveries", "_selected_action": [failed.pk, sent.pk]},
        )

    [request] = app.received
    assert "budget at 50%" in json.loads(request.body)["text"]
    failed.refresh_from_db()
    assert failed.status == DeliveryStatus.SENT


@dataclass
class SnsInbox:
    """An SNS alert channel of acme's whose topic feeds an SQS queue."""

    channel: AlertChannel
    sqs: Any
    queue_url: str

    def messages(self) -> list[dict]:
        return self.sqs.receive_message(QueueUrl=self.queue_url)["Messages"]


@pytest.fixture
def sns_inbox(org, settings):
    """The test runs under moto (``mock_aws``) as long as this fixture is set up."""
    with mock_aws():
        settings.LLMOPS_ALERT_SNS_ALLOWED_ACCOUNTS = ["123456789012"]  # moto's account
        sns = boto3.client("sns", region_name="eu-west-1")
        sqs = boto3.client("sqs", region_name="eu-west-1")
        topic_arn = sns.create_topic(Name="llmops-acme-alerts")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
        channel = alert_channel_create(tenant=org.tenant, name="sns", kind=ChannelKind.SNS, target=topic_arn)
        yield SnsInbox(channel, sqs, queue_url)


def test_sns_alert_is_published_to_the_topic(org, sns_inbox, django_capture_on_commit_callbacks):
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[sns_inbox.channel], thresholds=[100])
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 100, 10 * UNITS)
    [message] = sns_inbox.messages()
    published = json.loads(json.loads(message["Body"])["Message"])
    assert (published["tenant"], published["threshold_percent"]) == ("acme", 100)
    assert AlertDelivery.objects.unscoped().get().status == DeliveryStatus.SENT


def test_sns_alert_naming_a_non_ascii_customer_is_published_with_an_ascii_subject(
    org, sns_inbox, django_capture_on_commit_callbacks
):
    # SNS refuses a Subject that is not printable ASCII of at most 100 characters (moto checks only the length), and
    # a customer id is anyone's choice of up to 256 characters.
    customer = "zoë ☃ " + "ü" * 200
    budget = budget_create(
        tenant=org.tenant,
        limit_usd=Decimal("10"),
        scope=BudgetScope.CUSTOMER,
        customer=customer,
        channels=[sns_inbox.channel],
        thresholds=[100],
    )
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 100, 10 * UNITS)
    [message] = sns_inbox.messages()
    body = json.loads(message["Body"])
    assert body["Subject"] == f"[llmops] acme: customer zoe ? {'u' * 100}"[:100]
    assert json.loads(body["Message"])["budget"]["target"] == f"customer {customer}"
    assert AlertDelivery.objects.unscoped().get().status == DeliveryStatus.SENT


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[llmops] acme: team\nr&d\r\tspend", "[llmops] acme: team r&d  spend"),
        (" \u2028 [llmops] ｆｕｌｌ\u200bwidth\x00\x7f", "[llmops] fullwidth"),
        ("[llmops] " + "é" * 150, "[llmops] " + "e" * 91),
    ],
)
def test_sns_subject_is_printable_ascii_of_at_most_100_characters(subject, expected):
    assert sns_subject(subject) == expected
    assert sns_subject(subject).isascii() and sns_subject(subject).isprintable()


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        (ChannelKind.WEBHOOK, "ftp://hooks.example.com/x"),
        (ChannelKind.SLACK, "file:///etc/passwd"),
        (ChannelKind.SLACK, "javascript:alert(1)"),
        (ChannelKind.EMAIL, "not-an-address"),
        (ChannelKind.SNS, "arn:aws:sqs:eu-west-1:123:queue"),
    ],
)
def test_bad_channel_targets_are_refused(org, kind, target):
    with pytest.raises(ValidationError):
        alert_channel_create(tenant=org.tenant, name="bad", kind=kind, target=target, signing_secret="x")


def test_webhook_without_a_signing_secret_is_refused(org):
    with pytest.raises(ValidationError, match="signing secret"):
        alert_channel_create(tenant=org.tenant, name="hook", kind=ChannelKind.WEBHOOK, target="https://h.example")


def test_settles_crossing_thresholds_alert_once_each(live_org, mailoutbox, redis_counters):
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="a@example.com")
    budget_create(tenant=live_org.tenant, limit_usd=Decimal("10"), action="notify", channels=[channel])
    budgets = build_budget_index(tenant_id=live_org.tenant.pk).applicable(
        live_org.tenant.pk, live_org.team.pk, live_org.api_key.pk, "m"
    )
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)

    async def spend(amounts):
        for number, amount in enumerate(amounts):
            reservation = await budget_reserve(budgets=budgets, amount=Decimal(5), request_id=f"r{number}", now=now)
            await reservation_settle(reservation, actual=Decimal(amount))

    run(spend(["4", "0.5", "1", "2", "1", "2", "3"]))  # 4, 4.5, 5.5 (50%), 7.5, 8.5 (80%), 10.5 (100%), 13.5
    threshold_alerts_wait()
    alerts = BudgetAlert.objects.unscoped().order_by("threshold")
    assert [(alert.threshold, alert.spent_usd) for alert in alerts] == [
        (50, Decimal("5.5")),
        (80, Decimal("8.5")),
        (100, Decimal("10.5")),
    ]
    assert len(mailoutbox) == 3


def _spend_reserving_more_than_settled(org, requests: int) -> int:
    """`requests` requests that each reserve $5 and settle $1; returns how many the budgets refused."""
    budgets = build_budget_index(tenant_id=org.tenant.pk).applicable(org.tenant.pk, org.team.pk, org.api_key.pk, "m")
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)

    async def spend():
        refused = 0
        for number in range(requests):
            try:
                reservation = await budget_reserve(budgets=budgets, amount=Decimal(5), request_id=f"r{number}", now=now)
            except BudgetExceeded:
                refused += 1
                continue
            await reservation_settle(reservation, actual=Decimal(1))
        return refused

    refused = run(spend())
    threshold_alerts_wait()
    return refused


@pytest.mark.parametrize("counters", ["redis_counters", "no_redis"])
@pytest.mark.parametrize(("action", "refused_as"), [("block", "refused"), ("downgrade", "downgraded")])
def test_the_first_refusal_of_a_block_or_downgrade_budget_raises_its_top_alert_once(
    live_org, mailoutbox, monkeypatch, request, counters, action, refused_as
):
    request.getfixturevalue(counters)
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="a@example.com")
    budget_create(tenant=live_org.tenant, limit_usd=Decimal("10"), action=action, channels=[channel])

    # Spend stops at $6: a seventh request's worst case ($5) would pass the $10 limit. 30 requests are refused.
    assert _spend_reserving_more_than_settled(live_org, 36) == 30
    # Another gateway process, which has noticed nothing yet, refuses too.
    monkeypatch.setattr(thresholds, "_enqueued", set())
    assert _spend_reserving_more_than_settled(live_org, 5) == 5

    # 80% is left for spend to reach: a refusal raises its threshold alone.
    alerts = BudgetAlert.objects.unscoped().order_by("threshold")
    assert [(alert.threshold, alert.spent_usd, alert.refused) for alert in alerts] == [
        (50, Decimal("5"), False),
        (100, Decimal("6"), True),
    ]
    assert [mail.subject.rsplit(" ", 3)[1:] for mail in mailoutbox] == [
        ["budget", "at", "50%"],
        ["100%:", "requests", refused_as],
    ]


def test_a_refusal_that_spend_does_not_cause_raises_no_alert(live_org, redis_counters):
    """A request over the whole limit by itself, or one that only others' reservations in flight keep out, says
    nothing about the budget being spent: nothing was, and nobody is paged."""
    budget_create(tenant=live_org.tenant, limit_usd=Decimal("10"))
    budgets = build_budget_index(tenant_id=live_org.tenant.pk).applicable(
        live_org.tenant.pk, live_org.team.pk, live_org.api_key.pk, "m"
    )
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)

    async def refusals():
        with pytest.raises(BudgetExceeded):
            await budget_reserve(budgets=budgets, amount=Decimal(12), request_id="alone-too-large", now=now)
        held = [
            await budget_reserve(budgets=budgets, amount=Decimal(4), request_id=f"in-flight-{n}", now=now)
            for n in (1, 2)
        ]
        with pytest.raises(BudgetExceeded):
            await budget_reserve(budgets=budgets, amount=Decimal(4), request_id="kept-out", now=now)
        for reservation in held:
            await reservation_settle(reservation, actual=Decimal(0))

    run(refusals())
    threshold_alerts_wait()

    assert not BudgetAlert.objects.unscoped().exists()


def test_a_notify_budget_alerts_on_spend_only(live_org, mailoutbox, redis_counters):
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="a@example.com")
    budget_create(tenant=live_org.tenant, limit_usd=Decimal("10"), action="notify", channels=[channel])

    # Never refused: every request is admitted and spend goes past the limit.
    assert _spend_reserving_more_than_settled(live_org, 12) == 0

    alerts = BudgetAlert.objects.unscoped().order_by("threshold")
    assert [(alert.threshold, alert.spent_usd, alert.refused) for alert in alerts] == [
        (50, Decimal("5"), False),
        (80, Decimal("8"), False),
        (100, Decimal("10"), False),
    ]
    assert [mail.subject.rsplit(" ", 1)[1] for mail in mailoutbox] == ["50%", "80%", "100%"]
    assert "reached 100% in 2026-11: $10.00 of $10.00 (action at 100%: notify)." in mailoutbox[2].body
    assert not any("refus" in mail.body for mail in mailoutbox)


@pytest.mark.parametrize(
    ("action", "subject_end"), [("block", "requests refused"), ("downgrade", "requests downgraded")]
)
def test_a_refusal_alert_says_requests_are_refused(
    org, receiver, django_capture_on_commit_callbacks, action, subject_end
):
    app, url = receiver
    channel = alert_channel_create(
        tenant=org.tenant, name="hook", kind=ChannelKind.WEBHOOK, target=f"{url}/hook", signing_secret="s3cret"
    )
    slack = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(
        tenant=org.tenant, limit_usd=Decimal("10"), action=action, channels=[channel, slack], thresholds=[100]
    )
    with django_capture_on_commit_callbacks(execute=True):
        budget_threshold_alert(budget.pk, "2026-11", 100, 6 * UNITS, "", True)

    hook, message = sorted(app.received, key=lambda received: received.path)
    payload = json.loads(hook.body)
    assert (payload["threshold_percent"], payload["refused"], payload["spent_usd"]) == (100, True, "6.0000000000")
    subject, text = json.loads(message.body)["text"].split("\n", 1)
    assert subject.endswith(f"budget at 100%: {subject_end}*")
    assert "is refusing requests in 2026-11 because their worst case would pass the limit: $6.00 of $10.00" in text
    assert f"action at 100%: {action}" in text


def test_a_higher_threshold_noticed_first_still_goes_out_after_the_lower_ones(org, receiver):
    app, url = receiver
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal("10"), channels=[channel])

    budget_threshold_alert(budget.pk, "2026-11", 100, 10 * UNITS)  # the process that saw 100% was quicker
    budget_threshold_alert(budget.pk, "2026-11", 80, 8 * UNITS)
    budget_threshold_alert(budget.pk, "2026-11", 50, 5 * UNITS)

    assert list(BudgetAlert.objects.unscoped().order_by("pk").values_list("threshold", flat=True)) == [50, 80, 100]
    deliveries = {delivery.budget_alert.threshold: delivery for delivery in AlertDelivery.objects.unscoped().all()}
    with pytest.raises(AlertNotYet):
        alert_delivery_attempt(delivery_id=deliveries[100].pk)
    for threshold in (50, 80, 100):
        alert_delivery_attempt(delivery_id=deliveries[threshold].pk)
    subjects = [json.loads(request.body)["text"].split("\n")[0] for request in app.received]
    assert [subject.rsplit(" ", 1)[-1] for subject in subjects] == ["50%*", "80%*", "100%*"]


def test_small_amounts_are_written_with_places_enough_to_be_seen(live_org, mailoutbox):
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="a@example.com")
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal("0.00005"), channels=[channel], thresholds=[100])

    budget_threshold_alert(budget.pk, "2026-11", 100, 523_000)

    assert "$0.000052 of $0.000050" in mailoutbox[0].body
