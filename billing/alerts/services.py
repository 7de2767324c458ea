"""Alert channels, and raising and delivering alerts.

Exactly-once: a budget alert is a BudgetAlert row, unique per budget, period and threshold, and only
the caller whose insert created it creates the deliveries. A delivery is sent under its row lock and
skipped once sent, so a duplicated or retried task does not send it again.

In order: alerts of one budget are raised under its row lock, lower thresholds first (spend that reached 100%
reached 80% too, whichever process noticed first), and a channel gets a threshold's alert only after the lower
thresholds' alerts to it went out.
"""

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from billing.alerts.channels import ChannelSendError, channel_send, is_http_url, sns_topic_error, without_credential
from billing.budgets.index import units_to_usd
from billing.ledger.costs import format_money
from billing.models import (
    AlertChannel,
    AlertDelivery,
    Anomaly,
    Budget,
    BudgetAction,
    BudgetAlert,
    ChannelKind,
    DeliveryStatus,
    Lever,
    QualityAlert,
)
from core.crypto import encrypt_secret
from core.outbound import outbound_url_validate
from core.webhooks import webhook_secret_error
from tenants.models import Tenant

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


class AlertNotYet(ChannelSendError):
    """A lower threshold's alert to the same channel has not gone out yet; this one waits its turn."""


# How long a budget's alert waits for a lower threshold's to the same channel. The order is for the reader; a lower
# delivery that never goes out must not cost the page that matters most (100%: requests refused) its retries.
LOWER_THRESHOLD_WAIT = timedelta(minutes=5)


def alert_channel_validate(
    *, tenant: Tenant, kind: str, target: str, has_signing_secret: bool, signing_secret: str = ""
) -> None:
    if kind not in ChannelKind.values:
        raise ValidationError({"kind": f"Kind must be one of {', '.join(ChannelKind.values)}."})
    if kind == ChannelKind.EMAIL:
        try:
            validate_email(target)
        except ValidationError:
            raise ValidationError({"target": "Enter a valid email address."}) from None
    elif kind in (ChannelKind.SLACK, ChannelKind.WEBHOOK):
        if not is_http_url(target):
            raise ValidationError({"target": "The webhook URL must start with http:// or https:// and name a host."})
        outbound_url_validate(target, field="target")
    elif kind == ChannelKind.SNS and (refused := sns_topic_error(target, tenant=tenant)):
        raise ValidationError({"target": refused})
    if kind == ChannelKind.WEBHOOK and not has_signing_secret:
        raise ValidationError({"signing_secret": "A signed webhook needs a signing secret."})
    if secret_error := webhook_secret_error(signing_secret):
        raise ValidationError({"signing_secret": secret_error})


def alert_channel_create(
    *, tenant: Tenant, name: str, kind: str, target: str, signing_secret: str = "", is_active: bool = True
) -> AlertChannel:
    alert_channel_validate(
        tenant=tenant, kind=kind, target=target, has_signing_secret=bool(signing_secret), signing_secret=signing_secret
    )
    return AlertChannel.objects.create(
        tenant=tenant,
        name=name,
        kind=kind,
        target=target,
        signing_secret_encrypted=encrypt_secret(signing_secret) if signing_secret else "",
        is_active=is_active,
    )


def alert_channel_update(
    *, channel: AlertChannel, name: str, target: str, is_active: bool, signing_secret: str = ""
) -> AlertChannel:
    """Change a channel; an empty `signing_secret` keeps the one it has."""
    if signing_secret:
        channel.signing_secret_encrypted = encrypt_secret(signing_secret)
    alert_channel_validate(
        tenant=channel.tenant,
        kind=channel.kind,
        target=target,
        has_signing_secret=bool(channel.signing_secret_encrypted),
        signing_secret=signing_secret,
    )
    channel.name, channel.target, channel.is_active = name, target, is_active
    channel.save()
    return channel


def budget_alert_raise(
    *, budget_id: int, period_key: str, threshold: int, spent_units: int, customer: str = "", refused: bool = False
) -> list[AlertDelivery]:
    """Record the alert, and first those of the lower thresholds not raised yet (not for a refusal: its threshold
    alone), with a delivery per active channel.
    Returns those deliveries, lowest threshold first; none when the alert was raised before. `refused`: raised by a
    request the budget refused or downgraded (at `spent_units`, below the threshold), not by spend reaching it.

    A customer-scope budget alerts once per period and threshold too, for the first customer (`customer`) to reach
    it: one alert per customer would flood the channels of a tenant with thousands of customers."""
    with transaction.atomic():
        # One raiser at a time per budget, so the alerts and their deliveries are created in order.
        # Unscoped, reviewed: the id comes from the gateway's settlement of that budget's own tenant's request.
        budgets = Budget.objects.unscoped().select_for_update(of=("self",)).select_related("tenant")
        budget = budgets.filter(pk=budget_id).first()
        if budget is None:
            return []
        raised = set(budget.alerts.filter(period_key=period_key).values_list("threshold", flat=True))
        if threshold in raised:
            return []
        # A refusal raises its threshold alone: the lower ones stay for spend to reach, and say so when it does.
        below = set() if refused else {percent for percent in budget.thresholds if percent < threshold}
        reached = sorted(below - raised | {threshold})
        channels = list(budget.channels.filter(is_active=True))
        deliveries = []
        for percent in reached:
            alert = BudgetAlert.objects.create(
                budget=budget,
                period_key=period_key,
                threshold=percent,
                customer=customer,
                spent_usd=units_to_usd(spent_units),
                limit_usd=budget.limit_usd,
                refused=refused,
            )
            deliveries += [AlertDelivery.objects.create(budget_alert=alert, channel=channel) for channel in channels]
    cause = "refused a request" if refused else "reached"
    logger.info("budget %s %s: %s in %s; %s channels", budget_id, cause, reached, period_key, len(channels))
    return deliveries


def anomaly_alert_raise(*, anomaly: Anomaly) -> list[AlertDelivery]:
    """A delivery to every active channel of the anomaly's tenant."""
    with transaction.atomic():
        channels = AlertChannel.objects.for_tenant(anomaly.tenant_id).filter(is_active=True)
        return [AlertDelivery.objects.create(anomaly=anomaly, channel=channel) for channel in channels]


def deliveries_for_workers():
    """Every tenant's alert deliveries, for the task that sends them."""
    # Unscoped, reviewed: the ids come from the task queue, filled when the alert was raised for the channel's tenant.
    return AlertDelivery.objects.unscoped()


def alert_deliveries_due(*, delivery_ids: list[int], at: datetime) -> None:
    """Record when the sends just queued for these deliveries are due, which tells the sweep their tasks are alive."""
    deliveries_for_workers().filter(pk__in=delivery_ids).update(next_attempt_at=at)


def alert_delivery_attempt(*, delivery_id: int) -> None:
    """Send one delivery unless it was sent or given up on; raise ChannelSendError after recording why it failed."""
    failure = None
    with transaction.atomic():
        delivery = (
            deliveries_for_workers()
            .select_for_update(of=("self",))
            .select_related(
                "channel__tenant",
                "budget_alert__budget__tenant",
                "anomaly__tenant",
                "anomaly__team",
                "quality_alert__slo__tenant",
            )
            .get(pk=delivery_id)
        )
        # A send queued again (by the sweep, or a duplicated message) once it was given up on changes nothing: the
        # admin's retry makes it pending first.
        if delivery.status in (DeliveryStatus.SENT, DeliveryStatus.FAILED):
            return
        _wait_for_lower_thresholds(delivery)
        delivery.attempts += 1
        subject, text, payload = alert_message(delivery=delivery)
        try:
            channel_send(
                channel=delivery.channel,
                message_id=alert_delivery_message_id(delivery),
                subject=subject,
                text=text,
                payload=payload,
            )
        except ChannelSendError as exc:
            # Raised in its place, with no cause chained: the worker logs the error it retries on, and a Slack
            # webhook URL in it is a credential, masked as in last_error, which every member reads.
            failure = ChannelSendError(without_credential(delivery.channel, str(exc)))
            delivery.last_error = str(failure)[:MAX_ERROR_CHARS]
        else:
            delivery.status, delivery.sent_at = DeliveryStatus.SENT, timezone.now()
        delivery.save(update_fields=["attempts", "last_error", "status", "sent_at"])
    if failure is not None:
        raise failure


def _wait_for_lower_thresholds(delivery: AlertDelivery) -> None:
    """A budget's alerts reach a channel lowest threshold first, as long as the lower ones are on their way: a lower
    delivery pending for LOWER_THRESHOLD_WAIT (its task lost, its sends failing) no longer holds back this one."""
    alert = delivery.budget_alert
    if alert is None:
        return
    earlier = delivery.channel.deliveries.filter(
        budget_alert__budget_id=alert.budget_id,
        budget_alert__period_key=alert.period_key,
        budget_alert__threshold__lt=alert.threshold,
        status=DeliveryStatus.PENDING,
        created_at__gt=timezone.now() - LOWER_THRESHOLD_WAIT,
    )
    if earlier.exists():
        raise AlertNotYet(f"the lower thresholds' alerts to {delivery.channel} go out first")


def alert_delivery_give_up(*, delivery_id: int) -> None:
    deliveries_for_workers().filter(pk=delivery_id).exclude(status=DeliveryStatus.SENT).update(
        status=DeliveryStatus.FAILED
    )


def alert_delivery_reopen(*, delivery: AlertDelivery) -> bool:
    """Make a failed delivery pending again, due now, for the admin to retry; False when it was sent."""
    return bool(
        AlertDelivery.objects.for_tenant(delivery.channel.tenant_id)
        .filter(pk=delivery.pk)
        .exclude(status=DeliveryStatus.SENT)
        .update(status=DeliveryStatus.PENDING, next_attempt_at=timezone.now())
    )


def alert_delivery_message_id(delivery: AlertDelivery) -> str:
    return f"alert_delivery_{delivery.pk}"


def alert_message(*, delivery: AlertDelivery) -> tuple[str, str, dict]:
    """Subject, text and JSON payload of a delivery's alert."""
    if delivery.budget_alert_id:
        return _budget_alert_message(delivery.budget_alert)
    if delivery.anomaly_id:
        return _anomaly_message(delivery.anomaly)
    return _quality_alert_message(delivery.quality_alert)


_REFUSED_AS = {BudgetAction.BLOCK: "refused", BudgetAction.DOWNGRADE: "downgraded"}
_ACTION_DETAIL = {
    BudgetAction.BLOCK: ", 429 budget_exceeded until the period resets",
    BudgetAction.DOWNGRADE: ", served by a cheaper model while one fits, else 429 budget_exceeded",
}


def _budget_alert_message(alert: BudgetAlert) -> tuple[str, str, dict]:
    budget = alert.budget
    subject = f"[llmops] {budget.tenant.slug}: {budget.target_label()} budget at {alert.threshold}%"
    who = budget.target_label()
    if alert.customer and not budget.customer:
        first = "be refused" if alert.refused else "reach it"
        who = f"each customer (first to {first}: customer {alert.customer}; no alert for the others this period)"
    amounts = f"{format_money(alert.spent_usd)} of {format_money(alert.limit_usd)}"
    if alert.refused:
        subject += f": requests {_REFUSED_AS.get(budget.action, 'refused')}"
        text = (
            f"The {budget.period} budget of {budget.tenant.slug} for {who} is refusing requests in "
            f"{alert.period_key} because their worst case would pass the limit: {amounts} spent. Spend stops below the "
            f"limit, so this {alert.threshold}% alert is raised by the first refusal (action at 100%: "
            f"{budget.action}{_ACTION_DETAIL.get(budget.action, '')})."
        )
    else:
        text = (
            f"The {budget.period} budget of {budget.tenant.slug} for {who} reached {alert.threshold}% "
            f"in {alert.period_key}: {amounts} (action at 100%: {budget.action})."
        )
    payload = {
        "type": "budget.threshold",
        "alert_id": alert.pk,
        "tenant": budget.tenant.slug,
        "budget": {
            "id": budget.pk,
            "scope": budget.scope,
            "target": budget.target_label(),
            "period": budget.period,
            "action": budget.action,
        },
        "period_key": alert.period_key,
        "customer": alert.customer,
        "threshold_percent": alert.threshold,
        "refused": alert.refused,
        "spent_usd": f"{alert.spent_usd:f}",
        "limit_usd": f"{alert.limit_usd:f}",
        "created_at": alert.created_at.isoformat(),
    }
    return subject, text, payload


def _anomaly_message(anomaly: Anomaly) -> tuple[str, str, dict]:
    who = f"{anomaly.tenant.slug}/{anomaly.team.slug}" if anomaly.team_id else anomaly.tenant.slug
    subject = f"[llmops] {who}: {anomaly.get_metric_display().lower()} {anomaly.direction} ({anomaly.window})"
    text = (
        f"{anomaly.get_metric_display()} of {who} in the {anomaly.get_window_display().lower()} to "
        f"{anomaly.window_end.isoformat()} was {anomaly.observed.normalize():f}; the 14-day baseline median is "
        f"{anomaly.baseline_median.normalize():f} (MAD {anomaly.baseline_mad.normalize():f}), score {anomaly.score}."
    )
    payload = {
        "type": "anomaly",
        "anomaly_id": anomaly.pk,
        "tenant": anomaly.tenant.slug,
        "team": anomaly.team.slug if anomaly.team_id else None,
        "metric": anomaly.metric,
        "window": anomaly.window,
        "window_end": anomaly.window_end.isoformat(),
        "direction": anomaly.direction,
        "observed": f"{anomaly.observed:f}",
        "baseline_median": f"{anomaly.baseline_median:f}",
        "baseline_mad": f"{anomaly.baseline_mad:f}",
        "score": f"{anomaly.score:f}",
    }
    return subject, text, payload


def _rate_percent(rate: Decimal) -> str:
    return f"{rate * 100:.2f}".rstrip("0").rstrip(".") + "%"


def _quality_alert_message(alert: QualityAlert) -> tuple[str, str, dict]:
    slo = alert.slo
    lever = Lever(slo.lever).label.lower()
    scope = f"rule {slo.rule}" if slo.rule else "every rule"
    subject = f"[llmops] {slo.tenant.slug}: {lever} ({scope}) agreement below {_rate_percent(slo.min_agreement)}"
    action = alert.action_detail or "Alert only: no automatic action is enabled."
    text = (
        f"Shadow evaluation of {slo.tenant.slug}'s {lever} ({scope}) over the last {slo.window_days} days: "
        f"{_rate_percent(alert.agreement)} of {alert.samples} answers agreed with their reference (95% interval "
        f"{_rate_percent(alert.lower_bound)} to {_rate_percent(alert.upper_bound)}). The quality SLO wants the lower "
        f"bound at {_rate_percent(slo.min_agreement)} or more. {action}"
    )
    payload = {
        "type": "quality.slo_breached",
        "alert_id": alert.pk,
        "tenant": slo.tenant.slug,
        "slo": {
            "id": slo.pk,
            "lever": slo.lever,
            "rule": slo.rule,
            "min_agreement": f"{slo.min_agreement:f}",
            "min_samples": slo.min_samples,
            "window_days": slo.window_days,
            "action": slo.action,
        },
        "samples": alert.samples,
        "agreement": f"{alert.agreement:f}",
        "lower_bound": f"{alert.lower_bound:f}",
        "upper_bound": f"{alert.upper_bound:f}",
        "action_taken": alert.action_taken,
        "action_detail": alert.action_detail,
        "created_at": alert.created_at.isoformat(),
    }
    return subject, text, payload
