"""One call's tokens and cost cut among its payers: the parts add up to the whole exactly, each within one unit of
its exact share, the same way every time."""

from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from billing.ledger.costs import LEDGER_QUANTUM, cost_split
from routing.tokens import proportional_split

weights = st.lists(st.integers(0, 10_000), min_size=1, max_size=40)


@given(total=st.integers(0, 10**12), weights=weights)
def test_the_parts_add_up_to_the_total_each_within_one_of_its_exact_share(total, weights):
    parts = proportional_split(total, weights)

    assert sum(parts) == total
    whole = sum(weights) or len(weights)
    for part, weight in zip(parts, weights, strict=True):
        exact = Fraction(total * (weight if any(weights) else 1), whole)
        assert exact - 1 < part < exact + 1
    assert proportional_split(total, weights) == parts


def test_the_floors_leave_their_units_to_the_largest_remainders_the_earliest_first():
    # 26 by 2, 9, 10: 2.48, 11.14, 12.38; one unit left, to 2.48's.
    assert proportional_split(26, [2, 9, 10]) == [3, 11, 12]
    # Two remainders of one half: the earlier gets the unit.
    assert proportional_split(3, [1, 1]) == [2, 1]
    assert proportional_split(5, [0, 0]) == [3, 2]


@given(
    cost=st.decimals(min_value=0, max_value=1000, places=10),
    weights=weights,
)
def test_a_cost_splits_into_parts_at_the_ledger_s_places_that_add_up_to_it(cost, weights):
    parts = cost_split(cost, weights=weights)

    assert sum(parts) == cost
    assert all(part == part.quantize(LEDGER_QUANTUM) for part in parts)


def test_a_cost_split_where_each_part_priced_alone_would_round_up():
    # 7,801.5 and 18,203.5 quanta: rounded alone, half to even, 7,802 + 18,204, a quantum over the 26,005 of the call.
    assert cost_split(Decimal("0.0000026005"), weights=[6, 14]) == [Decimal("0.0000007802"), Decimal("0.0000018203")]
