from decimal import ROUND_HALF_EVEN, Decimal

from django import template

register = template.Library()


@register.filter
def cents(value: Decimal | None) -> str:
    """Money rounded to cents half to even, the rule exports and statements document (floatformat rounds half up)."""
    if value is None:
        return "–"
    return f"{Decimal(value).quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):f}"
