from decimal import ROUND_HALF_EVEN, Decimal

from django import template

from billing.ledger.costs import format_money

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
