"""No alert is lost for good: a raise the database refused is retried, a send its worker died in is sent by the next,
deliveries left pending are queued again (and only those: not one waiting for its retry), and the nightly check
raises thresholds spend reached without an alert.
The nightly check and anomaly detection keep going, or refuse clearly, where they used to stop."""

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from billing.alerts import tasks
from billing.alerts.anomalies import tenant_anomalies_detect
from billing.alerts.services import (
    alert_channel_create,
    alert_delivery_attempt,
    alert_delivery_give_up,
    anomaly_alert_raise,
    budget_alert_raise,
)
from billing.alerts.tasks import (
    ALERT_DELIVERY_MAX_RETRIES,
    ALERT_DELIVERY_STUCK_AFTER,
    alert_deliveries_requeue,
    alert_deliveries_send,
    alert_delivery_send,
    anomalies_detect_tenant,
    budget_threshold_alert,
)
from billing.budgets.counters import BudgetHold
from billing.budgets.index import budget_entry, usd_to_units
from billing.budgets.services import (
    CounterChecksIncomplete,
    budget_counter_check,
    budget_counters_check,
    budget_counters_rebuild,
    budget_create,
)
from billing.budgets.tasks import budget_counters_check as budget_counters_check_task
from billing.models import (
    AlertDelivery,
    Anomaly,
    AnomalyDirection,
    AnomalyMetric,
    AnomalyWindow,
    Budget,
    BudgetAlert,
    BudgetPeriod,
    BudgetScope,
    ChannelKind,
    DeliveryStatus,
    UsageRecord,
)
from tenants.services import tenant_update
from tests.batch.conftest import celery_worker_process, wait_for
from tests.budgets.test_anomalies import ledger_rows
from tests.servers import Receiver, ThreadedServer, committed_database_url

UNITS = 10**10


def spend(org, usd: str, *, customer: str = "", at: datetime | None = None, request_id: str = "") -> None:
    """A ledger row of the org's key, a second ago unless `at`."""
    UsageRecord.objects.create(
        request_id=request_id or f"r-{UsageRecord.objects.unscoped().count()}",
        tenant=org.tenant,
        team=org.team,
        api_key=org.api_key,
        customer=customer,
        cost_usd=Decimal(usd),
        http_status=200,
        created_at=at or timezone.now() - timedelta(seconds=1),
    )


def age(delivery: AlertDelivery, by: timedelta, *, due_in: timedelta | None = None, **changes) -> None:
    """Made `by` ago, its send due then (and lost), or in `due_in` from now (a retry waiting its turn)."""
    now = timezone.now()
    due = now - by if due_in is None else now + due_in
    AlertDelivery.objects.unscoped().filter(pk=delivery.pk).update(created_at=now - by, next_attempt_at=due, **changes)


# 1a. Raising an alert retries on database errors.


@pytest.fixture
def short_lock_timeout():
    """Postgres gives up waiting for a row lock after 100 ms, as a busy or failing-over database refuses a query."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '100ms'")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")


def test_a_threshold_alert_the_database_refused_is_raised_by_a_retry(live_org, mailoutbox, short_lock_timeout):
    """The gateway queues each crossing once per process: a raise that fails on the database is the alert's only way
    in, so it must be tried again rather than lost."""
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="o@example.com")
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[80])
    locked, release = threading.Event(), threading.Event()

    def hold_the_budget_row():
        with transaction.atomic():
            Budget.objects.unscoped().select_for_update().get(pk=budget.pk)
            locked.set()
            release.wait(timeout=10)
        connection.close()

    holder = threading.Thread(target=hold_the_budget_row)
    holder.start()
    locked.wait(timeout=10)
    threading.Timer(0.25, release.set).start()  # the database answers again after a few refused attempts
    try:
        budget_threshold_alert.delay(budget.pk, "2026-11", 80, 8 * UNITS)
    finally:
        release.set()
        holder.join()

    assert BudgetAlert.objects.unscoped().filter(budget=budget, threshold=80).count() == 1
    assert AlertDelivery.objects.unscoped().get().status == DeliveryStatus.SENT
    assert len(mailoutbox) == 1


# 1a. A send whose worker died is the next worker's (acks_late, reject_on_worker_lost), and sending twice is harmless.


@dataclass
class FirstRequestHangs(Receiver):
    """A receiver that holds the first request open until released, as a slow endpoint holds a send in flight."""

    first_arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.first_arrived.is_set():
            self.first_arrived.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        await super().__call__(scope, receive, send)


@pytest.fixture
def hanging_receiver():
    app = FirstRequestHangs()
    with ThreadedServer(app) as server:
        try:
            yield app, server.url
        finally:
            app.release.set()


@pytest.fixture
def live_broker():
    """Tasks queued from here go to the test Redis that the worker reads (tests/batch/conftest.py's live_broker)."""
    from llmops.celery import app

    previous = app.conf.broker_url, app.conf.task_always_eager
    app.conf.broker_url, app.conf.task_always_eager = settings.REDIS_URL, False
    yield app
    app.conf.broker_url, app.conf.task_always_eager = previous


@pytest.fixture
def prefork_worker(live_org, live_broker):
    """`celery -A llmops worker` with one pool process, on the test database and the test Redis as broker."""
    env = {
        **os.environ,
        "DATABASE_URL": committed_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
    }
    running = celery_worker_process(env, concurrency=1).start()
    yield running
    running.kill()


def pool_processes(worker) -> list[int]:
    main = worker.process.pid
    return [int(pid) for pid in Path(f"/proc/{main}/task/{main}/children").read_text().split()]


@pytest.mark.live
def test_a_send_whose_worker_died_is_sent_by_the_next_with_the_same_webhook_id(
    live_org, hanging_receiver, prefork_worker
):
    app, url = hanging_receiver
    channel = alert_channel_create(
        tenant=live_org.tenant, name="hook", kind=ChannelKind.WEBHOOK, target=f"{url}/hook", signing_secret="s3cret"
    )
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[80])
    budget_threshold_alert.delay(budget.pk, "2026-11", 80, 8 * UNITS)
    assert app.first_arrived.wait(timeout=30), "the worker never sent the alert"
    [pool_process] = pool_processes(prefork_worker)

    os.kill(pool_process, 9)  # mid-send: the delivery's row is not marked sent
    app.release.set()

    wait_for(lambda: AlertDelivery.objects.unscoped().get().status == DeliveryStatus.SENT, timeout=30)
    delivery = AlertDelivery.objects.unscoped().get()
    # The receiver got the send twice, as one message it can drop the second time.
    assert len(app.received) == 2
    assert {request.headers["webhook-id"] for request in app.received} == {f"alert_delivery_{delivery.pk}"}
    assert BudgetAlert.objects.unscoped().count() == 1


# 1b. The sweep queues again the deliveries a lost task left pending.


def test_deliveries_a_lost_task_left_pending_are_sent_by_the_sweep(org, receiver):
    app, url = receiver
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50, 80, 100])
    # Raised, but their sending was never queued (the broker was away after the commit).
    [budget_lost] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=50, spent_units=5 * UNITS)
    anomaly = Anomaly.objects.create(
        tenant=org.tenant,
        metric=AnomalyMetric.SPEND,
        window=AnomalyWindow.HOUR,
        window_end=timezone.now().replace(minute=0, second=0, microsecond=0),
        observed=Decimal(3),
        baseline_median=Decimal("0.02"),
        baseline_mad=Decimal("0.002"),
        score=Decimal(99),
        direction=AnomalyDirection.SPIKE,
    )
    [anomaly_lost] = anomaly_alert_raise(anomaly=anomaly)
    for delivery in (budget_lost, anomaly_lost):
        age(delivery, ALERT_DELIVERY_STUCK_AFTER + timedelta(seconds=5))
    # Still on their way: one just made, one whose next retry is due in 4 minutes.
    [just_made] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=80, spent_units=8 * UNITS)
    [retrying] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=100, spent_units=10 * UNITS)
    age(retrying, timedelta(minutes=20), due_in=timedelta(minutes=4), attempts=3, last_error="answered 500")

    assert alert_deliveries_requeue() == 2

    sent = AlertDelivery.objects.unscoped().filter(status=DeliveryStatus.SENT)
    assert set(sent.values_list("pk", flat=True)) == {budget_lost.pk, anomaly_lost.pk}
    assert len(app.received) == 2
    just_made.refresh_from_db()
    retrying.refresh_from_db()
    assert (just_made.status, just_made.attempts) == (DeliveryStatus.PENDING, 0)
    assert (retrying.status, retrying.attempts) == (DeliveryStatus.PENDING, 3)


def test_a_delivery_whose_retry_was_lost_goes_on_with_the_retries_it_had_left(org, receiver):
    """Pending past the time its next retry was due, it lost that retry's message: the sweep queues its retries again
    from its fifth attempt, not a single last one."""
    app, url = receiver
    app.statuses.extend([500, 500])
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50])
    [delivery] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=50, spent_units=5 * UNITS)
    age(delivery, ALERT_DELIVERY_STUCK_AFTER + timedelta(minutes=1), attempts=4, last_error="answered 500")

    assert alert_deliveries_requeue() == 1

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, len(app.received)) == (DeliveryStatus.SENT, 7, 3)
    assert alert_deliveries_requeue() == 0


def test_a_delivery_whose_retries_had_all_run_gets_one_last_attempt(org, receiver):
    """One the admin queued again after it failed lost its send: one more, then failed again if that fails too."""
    app, url = receiver
    app.statuses.extend([500, 500])
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50])
    [delivery] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=50, spent_units=5 * UNITS)
    attempts = ALERT_DELIVERY_MAX_RETRIES + 1
    age(delivery, ALERT_DELIVERY_STUCK_AFTER + timedelta(minutes=1), attempts=attempts, last_error="answered 500")

    assert alert_deliveries_requeue() == 1

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, len(app.received)) == (DeliveryStatus.FAILED, attempts + 1, 1)


def test_a_delivery_waiting_for_its_retry_is_left_to_it(org, receiver):
    """Due when its retry is, however long ago it was made and whatever its attempts: the sweep queuing it beside its
    retry would start a second chain of sends, or a last attempt that marks it failed while its retries run."""
    app, url = receiver
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50, 100])
    # Waiting for the 50% alert to go out first, no attempt made, retried in 4 minutes.
    [_, waiting] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=100, spent_units=10 * UNITS)
    age(waiting, timedelta(minutes=10), due_in=timedelta(minutes=4))
    # Failed long ago, queued again from the admin: its second retry is due in 50 seconds.
    [_, retried] = budget_alert_raise(budget_id=budget.pk, period_key="2026-10", threshold=100, spent_units=10 * UNITS)
    age(retried, timedelta(hours=3), due_in=timedelta(seconds=50), attempts=ALERT_DELIVERY_MAX_RETRIES + 2)

    assert alert_deliveries_requeue() == 0

    assert app.received == []
    pending = AlertDelivery.objects.unscoped().filter(status=DeliveryStatus.PENDING, pk__in=[waiting.pk, retried.pk])
    assert pending.count() == 2


def test_the_admins_retry_of_an_old_failed_delivery_is_left_to_its_own_send(org, receiver, admin_client):
    app, url = receiver
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50])
    [delivery] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=50, spent_units=5 * UNITS)
    failed = ALERT_DELIVERY_MAX_RETRIES + 1
    age(delivery, timedelta(hours=3), attempts=failed, status=DeliveryStatus.FAILED, last_error="answered 500")

    # Its send is queued once the admin's request commits: this test's transaction never does, so it stays queued.
    admin_client.post(
        "/admin/billing/alertdelivery/", {"action": "retry_deliveries", "_selected_action": [delivery.pk]}
    )

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert alert_deliveries_requeue() == 0
    assert app.received == []


def test_a_send_queued_again_after_the_delivery_was_given_up_on_sends_nothing(org, receiver):
    app, url = receiver
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50])
    [delivery] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=50, spent_units=5 * UNITS)
    alert_delivery_give_up(delivery_id=delivery.pk)

    alert_delivery_attempt(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, app.received) == (DeliveryStatus.FAILED, 0, [])


@pytest.mark.live
def test_a_send_waiting_for_its_retry_is_not_queued_again_by_the_sweep(live_org, receiver, prefork_worker):
    """The 100% alert waits for the 50% one to the same channel to go out (its send lost here): the worker retries it
    later, and records when, so the sweep leaves it to that retry."""
    _, url = receiver
    channel = alert_channel_create(tenant=live_org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/s")
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50, 100])
    budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=50, spent_units=5 * UNITS)
    [waiting] = budget_alert_raise(budget_id=budget.pk, period_key="2026-11", threshold=100, spent_units=10 * UNITS)
    age(waiting, ALERT_DELIVERY_STUCK_AFTER + timedelta(minutes=1))

    alert_delivery_send.delay(waiting.pk)
    retry_due = wait_for(
        lambda: AlertDelivery.objects.unscoped().filter(pk=waiting.pk, next_attempt_at__gt=timezone.now()).first()
    )

    assert (retry_due.status, retry_due.attempts) == (DeliveryStatus.PENDING, 0)
    assert alert_deliveries_requeue() == 0


def test_the_sweep_queues_a_bounded_number_a_run_oldest_first(org, receiver, monkeypatch):
    app, url = receiver
    monkeypatch.setattr(tasks, "ALERT_DELIVERIES_REQUEUE_MAX", 2)
    channel = alert_channel_create(tenant=org.tenant, name="slack", kind=ChannelKind.SLACK, target=f"{url}/slack")
    budget = budget_create(tenant=org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50])
    lost = []
    for month in range(1, 4):
        [delivery] = budget_alert_raise(
            budget_id=budget.pk, period_key=f"2026-0{month}", threshold=50, spent_units=5 * UNITS
        )
        age(delivery, ALERT_DELIVERY_STUCK_AFTER + timedelta(minutes=10 - month))
        lost.append(delivery.pk)

    assert alert_deliveries_requeue() == 2
    sent = AlertDelivery.objects.unscoped().filter(status=DeliveryStatus.SENT)
    assert set(sent.values_list("pk", flat=True)) == set(lost[:2])
    assert alert_deliveries_requeue() == 1
    assert sent.count() == 3 and len(app.received) == 3


# 1c. The nightly check raises the thresholds spend reached whose alert was lost, once.


def test_the_nightly_check_raises_thresholds_the_spend_reached_without_an_alert(live_org, redis_counters, mailoutbox):
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="o@example.com")
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50, 80, 100])
    spend(live_org, "8.5")
    # The counter agrees with the ledger; the task that was to raise its crossings failed for good.
    now = timezone.now()
    hold = BudgetHold.of(budget_entry(budget), now=now)
    redis_counters.hset(hold.redis_key, mapping={"spent": usd_to_units(Decimal("8.5")), "reserved": 0})
    check = budget_counter_check(budget=budget, now=now)
    assert check.agrees and check.counted_usd == Decimal("8.5")

    assert budget_counters_check_task() == 0

    alerts = BudgetAlert.objects.unscoped().filter(budget=budget, period_key=hold.window.key)
    assert sorted(alerts.values_list("threshold", flat=True)) == [50, 80]
    assert [mail.subject.rsplit(" ", 1)[-1] for mail in mailoutbox] == ["50%", "80%"]
    # Every night after: the BudgetAlert rows keep each threshold to one alert.
    assert budget_counters_check_task() == 0
    assert alerts.count() == 2 and len(mailoutbox) == 2


def test_the_nightly_check_raises_a_customer_budget_for_its_customer_with_most_spend(
    live_org, redis_counters, mailoutbox
):
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="o@example.com")
    budget = budget_create(
        tenant=live_org.tenant, scope=BudgetScope.CUSTOMER, limit_usd=Decimal(10), channels=[channel], thresholds=[50]
    )
    spend(live_org, "2", customer="bob")
    spend(live_org, "6", customer="alice")

    budget_counters_check_task()

    [alert] = BudgetAlert.objects.unscoped().filter(budget=budget)
    assert (alert.threshold, alert.customer, alert.spent_usd) == (50, "alice", Decimal(6))
    assert len(mailoutbox) == 1


def budget_as_of(budget: Budget, changed_at: datetime) -> None:
    """The budget as made or last changed at `changed_at` (its version)."""
    Budget.objects.unscoped().filter(pk=budget.pk).update(updated_at=changed_at)


def test_the_nightly_check_raises_what_the_tenants_day_just_ended_reached_without_an_alert(
    live_org, redis_counters, mailoutbox
):
    """At 03:15 UTC the day in Berlin is the next one already: a lost alert of the day before is raised then, for
    that day, once. A budget made after that day ended raises nothing for it."""
    live_org.tenant.time_zone = "Europe/Berlin"
    tenant_update(tenant=live_org.tenant)
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="o@example.com")
    day_budget = dict(limit_usd=Decimal(10), period=BudgetPeriod.DAY, thresholds=[80, 100], channels=[channel])
    budget = budget_create(tenant=live_org.tenant, **day_budget)
    budget_as_of(budget, datetime(2026, 12, 1, tzinfo=UTC))
    made_this_morning = budget_create(tenant=live_org.tenant, **day_budget)
    budget_as_of(made_this_morning, datetime(2026, 12, 8, 1, 0, tzinfo=UTC))  # 02:00 on the 8th in Berlin
    # Berlin's 7th: from 23:00 UTC on the 6th to 23:00 UTC on the 7th.
    spend(live_org, "5", at=datetime(2026, 12, 6, 23, 30, tzinfo=UTC))
    spend(live_org, "3.5", at=datetime(2026, 12, 7, 18, 0, tzinfo=UTC))
    spend(live_org, "1", at=datetime(2026, 12, 7, 23, 30, tzinfo=UTC))  # 00:30 on the 8th in Berlin: today's
    check_run = datetime(2026, 12, 8, 3, 15, tzinfo=UTC)

    budget_counters_check(now=check_run)

    [alert] = BudgetAlert.objects.unscoped().all()
    assert (alert.budget_id, alert.period_key, alert.threshold) == (budget.pk, "2026-12-07", 80)
    assert alert.spent_usd == Decimal("8.5")
    [mail] = mailoutbox
    assert mail.subject.endswith("at 80%") and "2026-12-07" in mail.body
    # Run again: the BudgetAlert row keeps the threshold to one alert.
    budget_counters_check(now=check_run + timedelta(minutes=1))
    assert BudgetAlert.objects.unscoped().count() == 1 and len(mailoutbox) == 1


def test_the_nightly_check_raises_what_the_month_that_ended_before_it_reached_without_an_alert(
    live_org, redis_counters, mailoutbox
):
    channel = alert_channel_create(tenant=live_org.tenant, name="mail", kind=ChannelKind.EMAIL, target="o@example.com")
    budget = budget_create(tenant=live_org.tenant, limit_usd=Decimal(10), channels=[channel], thresholds=[50, 80])
    budget_as_of(budget, datetime(2026, 11, 2, tzinfo=UTC))
    spend(live_org, "6", at=datetime(2026, 11, 30, 23, 59, tzinfo=UTC))

    budget_counters_check(now=datetime(2026, 12, 1, 3, 15, tzinfo=UTC))

    [alert] = BudgetAlert.objects.unscoped().filter(budget=budget)
    assert (alert.period_key, alert.threshold, alert.spent_usd) == ("2026-11", 50, Decimal(6))
    assert len(mailoutbox) == 1


# 2. One budget that cannot be checked does not leave the others unchecked.


def test_a_budget_the_nightly_check_fails_on_does_not_stop_the_others(live_org, redis_counters, caplog):
    now = timezone.now()
    broken = budget_create(tenant=live_org.tenant, limit_usd=Decimal(100))
    team_budget = budget_create(
        tenant=live_org.tenant, scope=BudgetScope.TEAM, team=live_org.team, limit_usd=Decimal(100)
    )
    spend(live_org, "1")
    budget_counters_rebuild(budget=team_budget)
    spend(live_org, "2")  # written behind the counter's back
    # The first budget's counter is unreadable (a key of another type): reading it raises a Redis error.
    redis_counters.set(BudgetHold.of(budget_entry(broken), now=now).redis_key, "not a counter")

    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(CounterChecksIncomplete, match=r"1 of 2 .*ids " + str(broken.pk)),
    ):
        budget_counters_check_task()

    assert budget_counter_check(budget=team_budget, now=timezone.now()).counted_usd == Decimal(3)
    assert f"budget {broken.pk}: counters not checked" in caplog.text


# 3. LLMOPS_ANOMALY_MIN_REQUESTS=0 is refused with a message that names it.


def test_a_minimum_of_zero_requests_is_refused_clearly(org, settings):
    settings.LLMOPS_ANOMALY_MIN_REQUESTS = 0
    ledger_rows(org, hours=3 * 24)  # most baseline windows without a request

    with pytest.raises(ImproperlyConfigured, match="LLMOPS_ANOMALY_MIN_REQUESTS must be 1 or more"):
        anomalies_detect_tenant(org.tenant.pk, datetime(2026, 11, 27, 12, 10, tzinfo=UTC).isoformat())


# 4. The hour in progress is printed, not stored: its finding would hide the whole hour's.


def hourly_spend(org, *, until: datetime, days: int = 15) -> None:
    """Six requests of about $0.20 in every hour of the `days` before `until`."""
    rows = []
    for hour_back in range(1, days * 24 + 1):
        hour = until - timedelta(hours=hour_back)
        for number in range(6):
            rows.append(
                UsageRecord(
                    request_id=f"h-{hour_back}-{number}",
                    tenant=org.tenant,
                    team=org.team,
                    api_key=org.api_key,
                    cost_usd=Decimal("0.2") + Decimal(number % 3) / 100,
                    http_status=200,
                    created_at=hour + timedelta(minutes=number),
                )
            )
    UsageRecord.objects.bulk_create(rows)


def test_the_hour_in_progress_is_printed_but_not_stored_or_alerted(org, mailoutbox, settings):
    settings.LLMOPS_ANOMALY_MIN_REQUESTS = 5
    alert_channel_create(tenant=org.tenant, name="mail", kind=ChannelKind.EMAIL, target="o@example.com")
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    hourly_spend(org, until=this_hour)
    end_of_this_hour = this_hour + timedelta(hours=1)

    out = StringIO()
    call_command("anomalies_detect", "--tenant", org.tenant.slug, "--at", end_of_this_hour.isoformat(), stdout=out)

    output = out.getvalue()
    # Nothing spent yet this hour: a drop, which only says the hour is not over.
    assert f"tenant, spend (usd) drop in the hour to {end_of_this_hour.isoformat()}" in output
    assert "not stored or alerted" in output
    assert not Anomaly.objects.unscoped().exists()
    assert not AlertDelivery.objects.unscoped().exists() and not mailoutbox
    # Once the hour is over it is judged on the whole of it: a runaway loop's spike, stored and alerted.
    for number in range(40):
        spend(org, "0.5", at=this_hour + timedelta(seconds=number), request_id=f"spike-{number}")
    found = tenant_anomalies_detect(
        tenant=org.tenant, now=end_of_this_hour + timedelta(minutes=5), deliveries_send=alert_deliveries_send
    )
    hourly = [a for a in found if (a.team_id, a.metric, a.window) == (None, AnomalyMetric.SPEND, AnomalyWindow.HOUR)]
    assert [anomaly.direction for anomaly in hourly] == [AnomalyDirection.SPIKE]


def test_a_spike_in_the_hour_in_progress_is_stored_and_alerted_once(org, mailoutbox, settings):
    settings.LLMOPS_ANOMALY_MIN_REQUESTS = 5
    alert_channel_create(tenant=org.tenant, name="mail", kind=ChannelKind.EMAIL, target="o@example.com")
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    hourly_spend(org, until=this_hour)
    end_of_this_hour = this_hour + timedelta(hours=1)
    for number in range(40):
        spend(org, "0.5", at=this_hour + timedelta(seconds=number), request_id=f"spike-{number}")

    out = StringIO()
    call_command("anomalies_detect", "--tenant", org.tenant.slug, "--at", end_of_this_hour.isoformat(), stdout=out)

    output = out.getvalue()
    assert f"tenant, spend (usd) spike in the hour to {end_of_this_hour.isoformat()}" in output
    assert "not stored or alerted" not in output
    stored = Anomaly.objects.unscoped().get(
        team=None, metric=AnomalyMetric.SPEND, window=AnomalyWindow.HOUR, window_end=end_of_this_hour
    )
    assert stored.direction == AnomalyDirection.SPIKE
    assert AlertDelivery.objects.unscoped().filter(anomaly=stored).count() == 1
    # The run once the hour has ended adds nothing for it: the spike was alerted as it happened.
    again = tenant_anomalies_detect(
        tenant=org.tenant, now=end_of_this_hour + timedelta(minutes=5), deliveries_send=alert_deliveries_send
    )
    assert stored.pk not in {anomaly.pk for anomaly in again}
    assert AlertDelivery.objects.unscoped().filter(anomaly=stored).count() == 1
