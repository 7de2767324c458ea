"""What the lines at a provider's batch endpoint hold against their budgets, from their submission to their end.

A line's reservation (its worst case at the batch price, made when it was admitted) is kept while the provider runs
it, up to the batch's completion window, and is settled by whichever process merges its result or gives its provider
batch up: ``hold_state`` is what the batch's ``provider_batches`` keeps of it to rebuild it there. A counter releases
only what it notes under the reservation's hold, once (billing.budgets.counters), so a counter seeded anew since holds
nothing of it, and a budget deleted since has nothing to settle.
"""

from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing.budgets.reservations import BudgetHold, Reservation, budget_charge, reservation_settle
from llmops.gateway.snapshot import ConfigSnapshot
from tenants.authentication import KeyPrincipal


def hold_state(reservation: Reservation, *, reserved_at: datetime, customer: str) -> dict:
    """The reservation as the batch keeps it: its holds by budget id, their periods those holding ``reserved_at``."""
    return {
        "request_id": reservation.request_id,
        "amount_units": reservation.amount_units,
        "held_as": reservation.held_as,
        "backend": reservation.backend,
        "reserved_at": reserved_at.isoformat(),
        "customer": customer,
        "budget_ids": [hold.entry.budget_id for hold in reservation.holds],
    }


def _reservation(snapshot: ConfigSnapshot, tenant_id: int, state: dict) -> Reservation:
    entries = {entry.budget_id: entry for entry in snapshot.budgets.by_tenant.get(tenant_id, ())}
    reserved_at = datetime.fromisoformat(state["reserved_at"])
    holds = tuple(
        BudgetHold.of(entries[budget_id], now=reserved_at, customer=state["customer"])
        for budget_id in state["budget_ids"]
        if budget_id in entries
    )
    return Reservation(
        state["request_id"],
        state["amount_units"],
        holds,
        backend=state["backend"],
        remaining_usd=None,
        held_as=state["held_as"],
    )


async def hold_release(snapshot: ConfigSnapshot, *, tenant_id: int, state: dict) -> None:
    """Give back what a line ended without a billed result holds."""
    reservation = _reservation(snapshot, tenant_id, state)
    if reservation.holds:
        await reservation_settle(reservation, actual=Decimal(0))


async def line_charge(
    snapshot: ConfigSnapshot,
    principal: KeyPrincipal,
    state: dict | None,
    *,
    request_id: str,
    served: str,
    customer: str,
    actual: Decimal,
) -> None:
    """Charge the budget counters a merged line's cost, its ledger row written: its reservation (``state``, None for
    a line that holds nothing) is replaced by it.

    The ledger row counts in the budgets that apply now, in the periods holding now: a hold whose budget no longer
    applies, or whose period has ended while the provider ran the line, is released only, and a budget that applies
    without holding the line (created since, or in its next period) is charged as a settle of nothing charges it.
    """
    now = timezone.now()
    applicable = snapshot.budgets.applicable(principal.tenant_id, principal.team_id, principal.key_id, served, customer)
    current = [BudgetHold.of(entry, now=now, customer=customer) for entry in applicable]
    reservation = _reservation(snapshot, principal.tenant_id, state) if state is not None else None
    held = reservation.holds if reservation is not None else ()
    charged = tuple(hold for hold in held if hold in current)
    released = tuple(hold for hold in held if hold not in current)
    if charged:
        await reservation_settle(replace(reservation, holds=charged), actual=actual)
    if released:
        await reservation_settle(replace(reservation, holds=released), actual=Decimal(0))
    unheld = tuple(hold for hold in current if hold not in held)
    if unheld:
        await budget_charge(holds=unheld, request_id=request_id, actual=actual)
