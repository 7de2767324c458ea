"""Agreement by lever, rule, model and task type with its Wilson interval, one tenant at a time; evaluation spend."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from billing.models import Lever, UsageKind
from billing.quality.selectors import (
    Agreement,
    agreement_by,
    agreement_of,
    evaluation_spend_usd,
    rule_of_route,
    wilson_interval,
)
from tenants.scoping import UnscopedQueryError
from tenants.services import api_key_create
from tests.factories import TeamFactory, TenantFactory, UsageRecordFactory
from tests.quality.factories import evaluations

WEEK = timedelta(days=7)


def test_wilson_interval_matches_the_closed_forms_at_the_edges():
    # 0 of n: [0, z²/(n+z²)]; n of n: [n/(n+z²), 1].
    low, high = wilson_interval(0, 10)
    assert low == 0 and round(high, 5) == Decimal("0.27753")
    low, high = wilson_interval(10, 10)
    assert round(low, 5) == Decimal("0.72247") and high == 1


def test_wilson_interval_of_96_in_100():
    low, high = wilson_interval(96, 100)
    assert (round(low, 4), round(high, 4)) == (Decimal("0.9016"), Decimal("0.9843"))


@given(samples=st.integers(min_value=1, max_value=100_000), share=st.floats(min_value=0, max_value=1))
def test_the_shown_interval_holds_the_rate_and_stays_in_zero_to_one(samples, share):
    agreement = Agreement(round(samples * share), samples)

    assert 0 <= agreement.lower <= agreement.rate <= agreement.upper <= 1


def test_more_samples_narrow_the_interval():
    few, many = Agreement(19, 20), Agreement(950, 1000)

    assert few.rate == many.rate
    assert many.upper - many.lower < few.upper - few.lower
    assert few.describe() == "95.0% (76.3–99.2%, n=20)"


def test_no_samples_say_so_and_show_no_number():
    assert Agreement(0, 0).describe() == "no shadow results"
    assert Agreement(0, 0).as_json()["agreement"] is None


@pytest.mark.parametrize(
    ("route", "rule"),
    [("short-tasks", "short-tasks"), ("by-score+score", "by-score"), ("a+budget-downgrade", "a"), ("score", "")],
)
def test_rule_of_route(route, rule):
    assert rule_of_route(route) == rule


@pytest.fixture
def window():
    now = timezone.now()
    return {"start": now - WEEK, "end": now + timedelta(seconds=1)}


def test_agreement_by_lever_counts_one_tenant_in_the_window(db, window):
    tenant, other = TenantFactory(), TenantFactory()
    evaluations(tenant, agreeing=48, disagreeing=2, lever=Lever.ROUTING)
    evaluations(tenant, agreeing=9, disagreeing=1, lever=Lever.COMPRESSION)
    evaluations(tenant, agreeing=0, disagreeing=5, lever=Lever.ROUTING, at=window["start"] - timedelta(hours=1))
    evaluations(other, agreeing=0, disagreeing=30, lever=Lever.ROUTING)

    rows = agreement_by(tenant_id=tenant.pk, **window)

    assert [(row.group, row.agreeing, row.samples) for row in rows] == [
        ({"lever": "compression"}, 9, 10),
        ({"lever": "routing"}, 48, 50),
    ]
    assert rows[1].as_json() == {
        "lever": "routing",
        "samples": 50,
        "agreeing": 48,
        "agreement": "0.9600",
        "lower_bound": "0.8653",
        "upper_bound": "0.9890",
    }


def test_agreement_by_any_combination_of_groupings(db, window):
    tenant = TenantFactory()
    evaluations(tenant, agreeing=3, disagreeing=1, rule="a", served_model="small", task_type="chat")
    evaluations(tenant, agreeing=2, disagreeing=0, rule="a+score", served_model="small", task_type="classification")
    evaluations(tenant, agreeing=1, disagreeing=1, rule="b", served_model="mid", task_type="chat")

    by_model_and_task = agreement_by(tenant_id=tenant.pk, group_by=("served_model", "task_type"), **window)
    by_rule = agreement_by(tenant_id=tenant.pk, group_by=("rule",), **window)

    assert [(row.group, row.agreeing, row.samples) for row in by_model_and_task] == [
        ({"served_model": "mid", "task_type": "chat"}, 1, 2),
        ({"served_model": "small", "task_type": "chat"}, 3, 4),
        ({"served_model": "small", "task_type": "classification"}, 2, 2),
    ]
    # A rule's scored requests are the rule's, as an SLO on it counts them.
    assert [(row.group["rule"], row.agreeing, row.samples) for row in by_rule] == [("a", 5, 6), ("b", 1, 2)]


def test_one_rule_counts_its_scored_and_downgraded_routes_too(db, window):
    tenant = TenantFactory()
    evaluations(tenant, agreeing=3, disagreeing=1, rule="a")
    evaluations(tenant, agreeing=2, disagreeing=0, rule="a+score")
    evaluations(tenant, agreeing=5, disagreeing=5, rule="ab")

    assert agreement_of(tenant_id=tenant.pk, lever=Lever.ROUTING, rule="a", **window) == Agreement(5, 6)
    assert agreement_of(tenant_id=tenant.pk, lever=Lever.SEMANTIC_CACHE, **window) == Agreement(0, 0)


def test_agreement_fails_closed_without_a_tenant(db, window):
    with pytest.raises(UnscopedQueryError):
        agreement_by(tenant_id=None, **window)


def test_an_unknown_grouping_or_lever_is_refused(db, window):
    tenant = TenantFactory()
    with pytest.raises(ValueError, match="unknown grouping"):
        agreement_by(tenant_id=tenant.pk, group_by=("customer",), **window)
    with pytest.raises(ValueError, match="unknown lever"):
        agreement_by(tenant_id=tenant.pk, lever="batch", **window)


def test_evaluation_spend_is_the_ledger_rows_of_kind_evaluation(db):
    tenant = TenantFactory(time_zone="UTC")
    key, _ = api_key_create(team=TeamFactory(tenant=tenant), name="k")
    day = datetime(2026, 3, 10, 12, tzinfo=UTC)
    UsageRecordFactory(api_key=key, created_at=day, cost_usd=Decimal("1.5"))
    UsageRecordFactory(api_key=key, created_at=day, cost_usd=Decimal("0.25"), kind=UsageKind.EVALUATION)
    UsageRecordFactory(api_key=key, created_at=day, cost_usd=Decimal("0.125"), kind=UsageKind.EVALUATION)
    UsageRecordFactory(
        api_key=key, created_at=day + timedelta(days=2), cost_usd=Decimal("9"), kind=UsageKind.EVALUATION
    )
    other_key, _ = api_key_create(team=TeamFactory(), name="k")
    UsageRecordFactory(api_key=other_key, created_at=day, cost_usd=Decimal("7"), kind=UsageKind.EVALUATION)

    assert evaluation_spend_usd(tenant=tenant, since=date(2026, 3, 10), until=date(2026, 3, 11)) == Decimal("0.375")
