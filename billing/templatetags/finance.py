from decimal import ROUND_HALF_EVEN, Decimal

from django import template

from billing.ledger.costs import format_money, format_money_change

register = template.Library()


@register.filter
def cents(value: Decimal | None) -> str:
    """Money rounded to cents half to even, the rule exports and statements document (floatformat rounds half up)."""
    if value is None:
        return "–"
    return f"{Decimal(value).quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):f}"


@register.filter
def money(value: Decimal | None) -> str:
    """Dollars with places enough that a small amount is not shown as $0.00 (billing.ledger.costs.format_money)."""
    return "–" if value is None else format_money(Decimal(value))


@register.filter
def money_change(value: Decimal | None) -> str:
    """A signed difference in dollars (billing.ledger.costs.format_money_change)."""
    return "–" if value is None else format_money_change(Decimal(value))
