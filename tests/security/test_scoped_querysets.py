"""Tenant-owned querysets refuse to reach rows until they say whose rows they mean (tenants.scoping)."""

from decimal import Decimal

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db.models import Manager, Sum

from billing.budgets.services import budget_create
from billing.models import Budget, BudgetCounter, UsageRecord
from tenants.models import Membership, Team, Tenant
from tenants.permissions import Action, Role
from tenants.scoping import TenantScopedManager, UnscopedQueryError
from tenants.services import api_key_create, membership_set
from tests.factories import TeamFactory, UsageRecordFactory, UserFactory

UNSCOPED_USES = {
    "iterate": lambda rows: list(rows),
    "count": lambda rows: rows.count(),
    "exists": lambda rows: rows.exists(),
    "get": lambda rows: rows.get(pk=1),
    "first": lambda rows: rows.first(),
    "values_list": lambda rows: list(rows.values_list("pk", flat=True)),
    "aggregate": lambda rows: rows.aggregate(total=Sum("pk")),
    "update": lambda rows: rows.update(name="x"),
    "delete": lambda rows: rows.delete(),
    "iterator": lambda rows: list(rows.iterator()),
    "as a subquery": lambda rows: list(Tenant.objects.unscoped().filter(teams__in=rows)),
    "or-ed with a scoped one": lambda rows: list(rows | Team.objects.unscoped()),
    "in a union": lambda rows: list(Team.objects.unscoped().union(rows)),
}


@pytest.fixture
def teams(db):
    acme, globex = TeamFactory(tenant__slug="acme"), TeamFactory(tenant__slug="globex")
    return acme, globex


@pytest.mark.parametrize("use", UNSCOPED_USES.values(), ids=UNSCOPED_USES.keys())
def test_every_way_to_reach_rows_refuses_an_unscoped_queryset_naming_the_model(teams, use):
    with pytest.raises(UnscopedQueryError, match=r"tenants\.Team rows were queried without a tenant scope"):
        use(Team.objects.filter(slug__startswith="team"))


def test_every_tenant_owned_model_has_a_scoped_default_manager_and_a_plain_base_manager():
    scoped = {model for model in apps.get_models() if isinstance(model._default_manager, TenantScopedManager)}
    owners = scoped | {Tenant}
    owned_but_unscoped = [
        model._meta.label
        for model in apps.get_models()
        if model not in scoped
        and any(field.related_model in owners for field in model._meta.fields if field.is_relation)
    ]

    assert Tenant in scoped and BudgetCounter in scoped
    assert owned_but_unscoped == []
    assert {type(model._base_manager) for model in scoped} == {Manager}


def test_for_tenant_restrict_and_unscoped_say_whose_rows(teams):
    acme, globex = teams
    viewer, finance = UserFactory(), UserFactory()
    membership_set(tenant=acme.tenant, user=viewer, role=Role.VIEWER)
    membership_set(tenant=globex.tenant, user=finance, role=Role.FINANCE)

    assert list(Team.objects.for_tenant(acme.tenant)) == [acme]
    assert list(Team.objects.for_tenant(globex.tenant_id)) == [globex]
    assert list(Team.objects.restrict(viewer, Action.VIEW)) == [acme]
    assert list(Team.objects.restrict(viewer, Action.EDIT)) == []
    assert list(Team.objects.restrict(finance, Action.EXPORT)) == [globex]
    assert list(Team.objects.restrict(UserFactory(is_superuser=True), Action.EDIT).order_by("pk")) == [acme, globex]
    assert Team.objects.unscoped().count() == 2
    assert list(Team.objects.none()) == []


def test_rows_reached_from_a_row_in_hand_are_scoped_by_it(teams):
    acme, _ = teams
    budget = budget_create(tenant=acme.tenant, limit_usd=Decimal("5"))
    BudgetCounter.objects.create(budget=budget, period_key="2026-01")
    UsageRecordFactory(api_key=api_key_create(team=acme)[0])

    assert list(acme.tenant.teams.all()) == [acme]
    assert budget.counters.count() == 1
    assert list(Tenant.objects.for_tenant(acme.tenant).prefetch_related("teams")[0].teams.all()) == [acme]
    assert UsageRecord.objects.for_tenant(acme.tenant).select_related("team").get().team == acme
    # Django's own machinery reads through the plain base manager.
    budget.refresh_from_db()
    assert BudgetCounter.objects.for_tenant(acme.tenant).get().budget == budget


def test_a_tenant_cascades_its_rows_away(teams):
    acme, globex = teams
    budget_create(tenant=acme.tenant, limit_usd=Decimal("5"))

    acme.tenant.delete()

    assert list(Team.objects.unscoped()) == [globex]
    assert not Budget.objects.unscoped().exists()


def test_uniqueness_checks_see_the_whole_table_and_learn_only_whether_a_clash_exists(teams):
    acme, _ = teams
    user = UserFactory()
    membership_set(tenant=acme.tenant, user=user, role=Role.VIEWER)

    with pytest.raises(ValidationError, match="already exists"):
        Membership(tenant=acme.tenant, user=user).full_clean()
    with pytest.raises(UnscopedQueryError):
        Team.objects.filter(slug=acme.slug).get()


def test_for_tenant_refuses_no_tenant():
    with pytest.raises(UnscopedQueryError, match="needs a tenant"):
        Team.objects.for_tenant(None)
