"""Quality SLOs: creating and changing them, and the check that follows each new shadow evaluation.

A check takes each active SLO of the tenant and lever under its row lock, so concurrent checks (one per evaluation,
on several workers) see one another's work: the one that finds the SLO holding and the agreement below it marks the
breach, raises the one QualityAlert, queues its deliveries to the tenant's active alert channels and runs the
SLO's automatic action; every later check finds `breached_at` set and raises nothing. The breach is cleared, and a
later breach alerts again, when:

- the lower bound is back at the minimum plus a margin (REARM_MARGIN, on at least min_samples evaluations), so a
  lower bound that hovers at the minimum does not clear and alert again with every evaluation;
- or the SLO's action ran and the live policy no longer does what it did (a later version, a rollback for instance,
  undid it): the check that sees it clears the breach and judges the window afresh, so a rule back on a model that
  still disagrees alerts again and gets the action again. Only a check sees it, and checks follow new evaluations:
  a rule the action moved off the lever sends none until the policy moves it back.

The breach, its action and the clearing are written under `audit_actor` naming the SLO, so the audit log says which
SLO changed the routing policy; the policy's own audit row carries the same note.
"""

import logging
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.alerts.tasks import alert_deliveries_send
from billing.models import AlertChannel, AlertDelivery, Lever, QualityAction, QualityAlert, QualitySlo
from billing.quality.selectors import Agreement, agreement_of, perfect_record_samples, reference_models_by_rule
from routing.models import RoutingPolicy
from routing.policy.quality_actions import QualityTransform, compression_off, routes_to_large, semantic_cache_off
from routing.services import DRAFT_LEFT_NOTE, QualityActionResult, routing_policy_quality_action
from tenants.audit import audit_actor
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Each automatic action, the one lever it can act on, and the change it makes to the routing policy.
ACTION_LEVER = {
    QualityAction.ROUTE_TO_LARGE: Lever.ROUTING,
    QualityAction.DISABLE_SEMANTIC_CACHE: Lever.SEMANTIC_CACHE,
    QualityAction.STOP_COMPRESSING: Lever.COMPRESSION,
}
ACTION_TRANSFORM: dict[str, QualityTransform] = {
    QualityAction.ROUTE_TO_LARGE: routes_to_large,
    QualityAction.DISABLE_SEMANTIC_CACHE: semantic_cache_off,
    QualityAction.STOP_COMPRESSING: compression_off,
}
SLO_FIELDS = ("lever", "rule", "min_agreement", "min_samples", "window_days", "action", "is_active")


def _live_document(tenant: Tenant | int) -> dict | None:
    """The document of the tenant's live routing policy version; None without one."""
    policy = RoutingPolicy.objects.for_tenant(tenant).select_related("live_version").first()
    return None if policy is None or policy.live_version is None else policy.live_version.document


def live_rule_names(*, tenant: Tenant) -> list[str]:
    """The rules of the tenant's live routing policy, in priority order; none without a live version."""
    document = _live_document(tenant)
    return [rule["name"] for rule in document.get("rules", [])] if document is not None else []


def quality_slo_validate(
    *,
    tenant: Tenant,
    lever: str,
    rule: str,
    action: str,
    min_agreement: Decimal | None = None,
    check_rule: bool = True,
) -> None:
    """Refuse an SLO whose action cannot act on its lever, that names a rule the live policy does not have (its
    agreement would count nothing, and its action would change nothing), or whose minimum no agreement can prove.
    `check_rule` False: an edit that keeps the rule, which a later policy may have renamed or removed, and which must
    still be possible (to switch it off)."""
    errors: dict[str, str] = {}
    if min_agreement is not None and min_agreement >= 1:
        # No count of evaluations proves 100%: the interval's lower bound stays under 1, so it would always breach.
        errors["min_agreement"] = "The minimum agreement must be below 1 (for example 0.99)."
    if lever not in Lever.values:
        errors["lever"] = f"Lever must be one of {', '.join(Lever.values)}."
    if action not in QualityAction.values:
        errors["action"] = f"Action must be one of {', '.join(QualityAction.values)}."
    elif action in ACTION_LEVER and ACTION_LEVER[action] != lever:
        errors["action"] = (
            f"'{QualityAction(action).label}' acts on the {Lever(ACTION_LEVER[action]).label.lower()} lever; "
            "this SLO watches another. Choose that lever, or alert only."
        )
    if rule and check_rule:
        names = live_rule_names(tenant=tenant)
        if rule not in names:
            known = f"its rules are {', '.join(names)}" if names else "the tenant has no live routing policy"
            errors["rule"] = f"No rule '{rule}' in the live routing policy ({known}); leave it empty for every rule."
    if errors:
        raise ValidationError(errors)


def _validated(slo: QualitySlo, *, check_rule: bool = True) -> QualitySlo:
    quality_slo_validate(
        tenant=slo.tenant,
        lever=slo.lever,
        rule=slo.rule,
        action=slo.action,
        min_agreement=slo.min_agreement,
        check_rule=check_rule,
    )
    slo.full_clean()
    return slo


def quality_slo_create(
    *,
    tenant: Tenant,
    lever: str,
    rule: str = "",
    min_agreement: Decimal = Decimal("0.95"),
    min_samples: int = 30,
    window_days: int = 7,
    action: str = QualityAction.NONE,
    is_active: bool = True,
) -> QualitySlo:
    slo = QualitySlo(
        tenant=tenant,
        lever=lever,
        rule=rule,
        min_agreement=min_agreement,
        min_samples=min_samples,
        window_days=window_days,
        action=action,
        is_active=is_active,
    )
    _validated(slo).save()
    return slo


# A breach was judged on these terms: changing one of them, or switching the SLO off, clears it, and the next check
# judges afresh (and alerts again if it is still breached).
SLO_TERMS = ("lever", "rule", "min_agreement", "min_samples", "window_days")


def quality_slo_update(*, slo: QualitySlo, **changes) -> QualitySlo:
    """Change an SLO. Its breach stands until a check finds it holding again, unless the change is to its terms or
    switches it off. Its rule is checked against the live policy only when the change names another."""
    if unknown := set(changes) - set(SLO_FIELDS):
        raise TypeError(f"quality_slo_update() got unknown fields {sorted(unknown)}")
    with transaction.atomic():
        # The stored row, locked: a check may have marked a breach since this instance was read.
        stored = QualitySlo.objects.for_tenant(slo.tenant_id).select_for_update(of=("self",)).get(pk=slo.pk)
        for name, value in changes.items():
            setattr(slo, name, value)
        terms_changed = any(getattr(stored, name) != getattr(slo, name) for name in SLO_TERMS)
        slo.breached_at = None if terms_changed or not slo.is_active else stored.breached_at
        _validated(slo, check_rule=slo.rule != stored.rule).save()
    return slo


def slo_window(*, slo: QualitySlo, now: datetime) -> tuple[datetime, datetime]:
    # The end is a second ahead, so an evaluation stamped the moment the check began counts.
    return now - timedelta(days=slo.window_days), now + timedelta(seconds=1)


def slo_agreement(*, slo: QualitySlo, now: datetime) -> Agreement:
    start, end = slo_window(slo=slo, now=now)
    return agreement_of(tenant_id=slo.tenant_id, start=start, end=end, lever=slo.lever, rule=slo.rule)


def slo_is_breached(*, slo: QualitySlo, agreement: Agreement) -> bool:
    """At least min_samples evaluations and the lower bound under the minimum. On fewer evaluations than a record
    with no disagreement needs to clear the minimum (selectors.perfect_record_samples: 73 at 0.95), the observed
    rate must be under it too: there the lower bound is under the minimum even for a lever that was never wrong."""
    if agreement.samples < slo.min_samples or agreement.lower >= slo.min_agreement:
        return False
    if agreement.rate < slo.min_agreement:
        return True
    # A minimum of 1, refused since, may stand on an SLO saved before: no count of evaluations clears it.
    return slo.min_agreement < 1 and agreement.samples >= perfect_record_samples(slo.min_agreement)


def slo_holds(*, slo: QualitySlo, agreement: Agreement) -> bool:
    """Shown to hold: enough evaluations, and the lower bound at the minimum. Too few is neither."""
    return agreement.samples >= slo.min_samples and agreement.lower >= slo.min_agreement


# A breach clears when the lower bound is this much over the minimum (half the way to 1 when that is closer).
REARM_MARGIN = Decimal("0.01")


def slo_rearm_at(slo: QualitySlo) -> Decimal:
    """The lower bound at which a breached SLO clears."""
    return slo.min_agreement + min(REARM_MARGIN, (1 - slo.min_agreement) / 2)


def slo_recovered(*, slo: QualitySlo, agreement: Agreement) -> bool:
    return agreement.samples >= slo.min_samples and agreement.lower >= slo_rearm_at(slo)


def slo_actor_name(slo: QualitySlo) -> str:
    scope = f"rule {slo.rule}" if slo.rule else "every rule"
    return f"quality SLO {slo.pk} ({slo.lever}, {scope}, min {slo.min_agreement})"


def quality_slos_check(*, tenant_id: int, lever: str) -> list[QualityAlert]:
    """Check the tenant's active SLOs of the lever (one rule's and the whole lever's) after a new shadow evaluation;
    returns the alerts this check raised (at most one per SLO, and none while an SLO stays breached)."""
    slo_ids = list(
        QualitySlo.objects.for_tenant(tenant_id).filter(lever=lever, is_active=True).values_list("pk", flat=True)
    )
    alerts = []
    for slo_id in slo_ids:
        if (alert := _slo_check(tenant_id=tenant_id, slo_id=slo_id)) is not None:
            alerts.append(alert)
    return alerts


def _slo_check(*, tenant_id: int, slo_id: int) -> QualityAlert | None:
    with transaction.atomic():
        slo = (
            QualitySlo.objects.for_tenant(tenant_id)
            .select_for_update(of=("self",))
            .select_related("tenant")
            .filter(pk=slo_id, is_active=True)
            .first()
        )
        if slo is None:
            return None
        # Counted under the lock: a check that waited for another sees the evaluations that one saw, and more.
        now = timezone.now()
        agreement = slo_agreement(slo=slo, now=now)
        if slo.breached_at is not None:
            if slo_recovered(slo=slo, agreement=agreement):
                why = f"holds again at {agreement.describe()}"
            elif _action_undone(slo=slo, now=now):
                why = "the live routing policy no longer does what its action did"
            else:
                return None
            slo.breached_at = None
            with audit_actor(name=slo_actor_name(slo)):
                slo.save(update_fields=["breached_at"])
            logger.info("quality SLO %s cleared: %s", slo.pk, why)
        if slo_is_breached(slo=slo, agreement=agreement):
            with audit_actor(name=slo_actor_name(slo)):
                return _breach(slo=slo, agreement=agreement, now=now)
    return None


def _action_undone(*, slo: QualitySlo, now: datetime) -> bool:
    """Whether the action this breach ran would change the live policy again: a later version undid it. False when
    the action did not run (not enabled, nothing to change, refused): its outcome would not differ now."""
    alerts = QualityAlert.objects.for_tenant(slo.tenant_id).filter(slo=slo, created_at__gte=slo.breached_at)
    alert = alerts.order_by("-created_at").first()
    if alert is None or alert.action_taken == QualityAction.NONE or alert.action_taken != slo.action:
        return False
    document = _live_document(slo.tenant_id)
    return document is not None and bool(slo_transform(slo=slo, now=now)(document, slo.rule).changes)


def _breach(*, slo: QualitySlo, agreement: Agreement, now: datetime) -> QualityAlert:
    slo.breached_at = now
    slo.save(update_fields=["breached_at"])
    action_taken, detail = _act(slo=slo, agreement=agreement, now=now)
    alert = QualityAlert.objects.create(
        slo=slo,
        samples=agreement.samples,
        agreement=agreement.rate,
        lower_bound=agreement.lower,
        upper_bound=agreement.upper,
        action_taken=action_taken,
        action_detail=detail,
    )
    channels = AlertChannel.objects.for_tenant(slo.tenant_id).filter(is_active=True)
    alert_deliveries_send([AlertDelivery.objects.create(quality_alert=alert, channel=channel) for channel in channels])
    logger.warning("quality SLO %s breached at %s; action: %s", slo.pk, agreement.describe(), detail or "none")
    return alert


def slo_transform(*, slo: QualitySlo, now: datetime) -> QualityTransform:
    """The change the SLO's action makes to a policy; route_to_large reads which models the SLO's evaluations in the
    window were judged against, where no alias settles a rule's reference."""
    transform = ACTION_TRANSFORM[slo.action]
    if slo.action != QualityAction.ROUTE_TO_LARGE:
        return transform
    start, end = slo_window(slo=slo, now=now)
    references = reference_models_by_rule(tenant_id=slo.tenant_id, start=start, end=end, lever=slo.lever, rule=slo.rule)
    return partial(transform, references=references)


def _act(*, slo: QualitySlo, agreement: Agreement, now: datetime) -> tuple[str, str]:
    """Run the SLO's automatic action; (the action taken, or none, and what it did or why it did nothing)."""
    if slo.action == QualityAction.NONE:
        return QualityAction.NONE, ""
    note = f"{slo_actor_name(slo)} breached: {agreement.describe()} agree"
    try:
        with transaction.atomic():  # a refused publish is undone alone; the alert still goes out
            result = routing_policy_quality_action(
                tenant=slo.tenant, transform=slo_transform(slo=slo, now=now), rule=slo.rule, note=note
            )
    except ValidationError as error:
        return QualityAction.NONE, f"Not done: the changed policy could not be published: {'; '.join(error.messages)}"
    return (slo.action if result.version else QualityAction.NONE), action_detail(result)


def action_detail(result: QualityActionResult) -> str:
    """What the action did and what it left, in the alert's words."""
    parts = []
    if result.version is not None:
        parts.append(f"Published routing policy version {result.version.number}: {'; '.join(result.changes)}.")
    if result.not_done:
        parts.append(f"{'Not changed' if parts else 'Nothing changed'}: {'; '.join(result.not_done)}.")
    if result.draft_left:
        parts.append(DRAFT_LEFT_NOTE)
    return " ".join(parts) or "Nothing changed: the live policy already does it."
