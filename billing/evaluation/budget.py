"""A tenant's evaluation budget: what shadow evaluation's calls may cost per calendar month (UTC), kept apart from the
product budgets (billing.budgets), which never count evaluation calls.

Each evaluation (one sampled request's lever) reserves the worst cases of all its calls at once, before the first,
as an EvaluationHold row on the tenant's EvaluationSpend row of the month, under that row's lock: refused when what
is spent, what holds in flight reserve and this worst case would pass ``monthly_budget_usd``. Each call is then
settled with what it cost, and the hold ends with the evaluation. Concurrent evaluations on any number of workers
therefore never together commit more than the budget (as long as no provider bills more than the worst case
reserved for its call: see llmops.gateway.shadow.services for the prompt's margin).

Once what is left of the month's budget after what is spent cannot cover even the cheapest evaluation reserved that
month, the tenant's settings are marked ``exhausted_until`` the next month's start: the gateways stop sampling it
(they read the mark from their configuration snapshot, which the save refreshes) instead of sending samples only to
have them refused.

The hold is also the evaluation's claim: a second run of the same sample (a redelivered task, a manual re-run) finds
it, or the ShadowEvaluation recorded before it ended, and pays for nothing. A hold still here past its
``expires_at`` belongs to a worker that died between reserve and settle; ``evaluation_holds_release_expired`` (beat,
every minute) gives it back and counts it.
"""

import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F

from billing.models import EvaluationHold, EvaluationSettings, EvaluationSpend, ShadowEvaluation
from tenants.audit import audit_actor

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
EXHAUSTED_ACTOR = "shadow evaluation (budget spent)"
# Expired holds released in one run of the beat task; the rest wait for the next run.
RELEASE_BATCH = 500


class EvaluationClaimed(Exception):
    """The (request, lever) is being evaluated, or was: its hold or its ShadowEvaluation exists."""


def evaluation_month(moment: datetime) -> date:
    return moment.astimezone(UTC).date().replace(day=1)


def _locked_spend(tenant_id: int, month: date) -> EvaluationSpend:
    EvaluationSpend.objects.bulk_create([EvaluationSpend(tenant_id=tenant_id, month=month)], ignore_conflicts=True)
    return EvaluationSpend.objects.for_tenant(tenant_id).select_for_update().get(month=month)


def _claimed(tenant_id: int, request_id: str, lever: str) -> bool:
    of_it = {"request_id": request_id, "lever": lever}
    return (
        EvaluationHold.objects.for_tenant(tenant_id).filter(**of_it).exists()
        or ShadowEvaluation.objects.for_tenant(tenant_id).filter(**of_it).exists()
    )


@transaction.atomic
def evaluation_budget_reserve(
    *, tenant_id: int, request_id: str, lever: str, amount: Decimal, now: datetime, hold_seconds: float
) -> EvaluationHold | None:
    """Reserve ``amount`` (the worst case of every call of the evaluation) against this month's evaluation budget, as
    a hold that ends at the latest ``hold_seconds`` from now. None, counted as refused, when the budget cannot cover
    it or the tenant no longer evaluates; raises EvaluationClaimed when the evaluation is another run's."""
    month = evaluation_month(now)
    spend = _locked_spend(tenant_id, month)
    if _claimed(tenant_id, request_id, lever):
        raise EvaluationClaimed
    settings = EvaluationSettings.objects.for_tenant(tenant_id).filter(enabled=True).first()
    if settings is None or spend.spent_usd + spend.reserved_usd + amount > settings.monthly_budget_usd:
        spend.refused += 1
        spend.save(update_fields=["refused"])
        logger.info(
            "shadow evaluation of tenant %s refused: its evaluation budget cannot cover %s USD", tenant_id, amount
        )
        if settings is not None and _exhausted(spend, settings.monthly_budget_usd):
            _pause_sampling(settings, until=_next_month_start(month))
        return None
    try:
        # A savepoint: a run of the same sample that reserved under another month's lock (at midnight) claimed it.
        with transaction.atomic():
            hold = EvaluationHold.objects.create(
                tenant_id=tenant_id,
                request_id=request_id,
                lever=lever,
                month=month,
                amount_usd=amount,
                created_at=now,
                expires_at=now + timedelta(seconds=hold_seconds),
            )
    except IntegrityError:
        raise EvaluationClaimed from None
    spend.reserved_usd += amount
    if spend.smallest_reserved_usd is None or amount < spend.smallest_reserved_usd:
        spend.smallest_reserved_usd = amount
    spend.save(update_fields=["reserved_usd", "smallest_reserved_usd"])
    return hold


def _exhausted(spend: EvaluationSpend, budget: Decimal) -> bool:
    """Whether what is left of the month's budget after what is spent (holds in flight may still settle for less)
    cannot cover even the cheapest evaluation the month has reserved. Before one was, nothing says it is exhausted."""
    smallest = spend.smallest_reserved_usd
    return smallest is not None and budget - spend.spent_usd < smallest


def _next_month_start(month: date) -> datetime:
    following = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime(following.year, following.month, 1, tzinfo=UTC)


def _pause_sampling(settings: EvaluationSettings, *, until: datetime) -> None:
    """Stop the gateways sampling the tenant until ``until``: saved, so its configuration snapshot moves on every
    gateway process (and the audit log says who paused it)."""
    if settings.exhausted_until is not None and settings.exhausted_until >= until:
        return
    settings.exhausted_until = until
    with audit_actor(name=EXHAUSTED_ACTOR):
        settings.save(update_fields=["exhausted_until"])
    logger.warning(
        "shadow evaluation of tenant %s paused until %s: its evaluation budget is spent", settings.tenant_id, until
    )


def _locked_hold(hold: EvaluationHold) -> EvaluationHold | None:
    """The hold as it is now, locked; None once released (by the beat task, its bound passed)."""
    return EvaluationHold.objects.for_tenant(hold.tenant_id).select_for_update().filter(pk=hold.pk).first()


@transaction.atomic
def evaluation_budget_settle(*, hold: EvaluationHold, amount: Decimal, actual: Decimal) -> None:
    """Replace ``amount`` of what the hold reserves (one call's worst case) with ``actual``, what that call cost. A
    hold released meanwhile gave its reservation back already: only the cost is added then."""
    spend = _locked_spend(hold.tenant_id, hold.month)
    held = _locked_hold(hold)
    if held is not None:
        part = min(amount, held.amount_usd)
        held.amount_usd -= part
        held.save(update_fields=["amount_usd"])
        spend.reserved_usd = max(spend.reserved_usd - part, ZERO)
    spend.spent_usd += actual
    spend.save(update_fields=["reserved_usd", "spent_usd"])


@transaction.atomic
def evaluation_hold_end(*, hold: EvaluationHold) -> None:
    """The evaluation is over (whatever became of it): what its hold still reserves goes back, and the row goes."""
    spend = _locked_spend(hold.tenant_id, hold.month)
    held = _locked_hold(hold)
    if held is None:
        return
    spend.reserved_usd = max(spend.reserved_usd - held.amount_usd, ZERO)
    spend.save(update_fields=["reserved_usd"])
    held.delete()


def evaluation_holds_release_expired(*, now: datetime) -> int:
    """Give back what holds past their bound still reserve: their worker died (killed, out of memory, a cold
    shutdown) before it settled them. Each is counted on its month's EvaluationSpend (``released``); returns how many.

    A cross-tenant job: holds of every tenant, each released under its own tenant's row lock."""
    expired = EvaluationHold.objects.unscoped().filter(expires_at__lt=now).order_by("expires_at")
    released = 0
    for hold in expired[:RELEASE_BATCH]:
        with transaction.atomic():
            spend = _locked_spend(hold.tenant_id, hold.month)
            held = _locked_hold(hold)
            if held is None:
                continue
            spend.reserved_usd = max(spend.reserved_usd - held.amount_usd, ZERO)
            spend.released += 1
            spend.save(update_fields=["reserved_usd", "released"])
            held.delete()
        released += 1
        logger.warning(
            "shadow evaluation of %s (%s, tenant %s): hold of %s USD released, unsettled past %s",
            hold.request_id,
            hold.lever,
            hold.tenant_id,
            held.amount_usd,
            hold.expires_at.isoformat(),
        )
    return released


def evaluation_unjudged_count(*, tenant_id: int, now: datetime) -> None:
    """Count an evaluation that ended without a verdict in the month's figures."""
    month = evaluation_month(now)
    EvaluationSpend.objects.bulk_create([EvaluationSpend(tenant_id=tenant_id, month=month)], ignore_conflicts=True)
    EvaluationSpend.objects.for_tenant(tenant_id).filter(month=month).update(unjudged=F("unjudged") + 1)
