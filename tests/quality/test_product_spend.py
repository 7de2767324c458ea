"""Product spend never includes the shadow evaluations' calls: rollups, the dashboard, grouped exports and the usage
API's groups, statements; evaluation spend is reported on its own, and reconciles with the ledger."""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from billing.finance.dashboard import dashboard_build
from billing.finance.exports import export_params_parse, usage_export_chunks
from billing.finance.rollups import usage_rollups_rebuild
from billing.finance.statements import customer_statement_build, statement_build, statement_csv
from billing.models import UsageKind, UsageRecord, UsageRollupDaily
from tests.finance.conftest import make_finance_tenant, usage_row

DAY = datetime(2025, 3, 3, 12, tzinfo=UTC)
RANGE = {"since": "2025-03-01", "until": "2025-03-31"}


def evaluation_row(api_key, *, cost: str, model: str, customer: str = "") -> UsageRecord:
    row = usage_row(api_key, created_at=DAY + timedelta(minutes=5), cost=cost, model=model)
    row.kind, row.parent_request_id, row.route, row.customer = (
        UsageKind.EVALUATION,
        "sampled",
        "shadow-evaluation",
        customer,
    )
    return row


@pytest.fixture
def ledger(db):
    acme, globex = make_finance_tenant("acme"), make_finance_tenant("globex")
    product = usage_row(acme.keys[0], created_at=DAY, cost="0.1000000000", model="m-small")
    product.customer = "alice"
    UsageRecord.objects.bulk_create(
        [
            product,
            usage_row(acme.keys[1], created_at=DAY, cost="0.2000000000", model="m-small"),
            # The reference call (on a model no product request used that hour) and a judge call.
            evaluation_row(acme.keys[0], cost="0.0400000000", model="m-large", customer="alice"),
            evaluation_row(acme.keys[0], cost="0.0010000000", model="m-small", customer="alice"),
            usage_row(globex.keys[0], created_at=DAY, cost="9.0000000000", model="m-small"),
        ]
    )
    usage_rollups_rebuild(tenant=acme.tenant, first=date(2025, 3, 1), last=date(2025, 3, 31))
    return acme


def test_rollups_sum_product_rows_and_hold_evaluation_cost_apart(ledger):
    rollups = {(row.team.slug, row.served_model): row for row in UsageRollupDaily.objects.for_tenant(ledger.tenant)}

    assert sum(row.cost_usd for row in rollups.values()) == Decimal("0.3")
    assert sum(row.evaluation_cost_usd for row in rollups.values()) == Decimal("0.041")
    reference = rollups[("acme-search", "m-large")]
    assert (reference.requests, reference.cost_usd, reference.evaluation_cost_usd) == (0, 0, Decimal("0.04"))
    assert rollups[("acme-search", "m-small")].requests == 1


def test_dashboard_shows_product_spend_and_evaluation_spend_apart(ledger, client):
    dashboard = dashboard_build(tenant=ledger.tenant, since=date(2025, 3, 1), until=date(2025, 3, 31))

    assert dashboard.totals.cost_usd == Decimal("0.3")
    assert dashboard.totals.requests == 2
    assert dashboard.spend_by_model == {"m-small": Decimal("0.3")}
    assert dashboard.evaluation_spend == "0.04"

    client.force_login(ledger.finance_user)
    page = client.get(reverse("admin:billing_usage_dashboard"), {"since": "2025-03-01", "until": "2025-03-31"})
    assert 'id="kpi-spend"><span class="label">Spend (USD)</span><span class="value">0.30<' in page.content.decode()
    assert "Shadow evaluation cost <strong>$0.04</strong>" in page.content.decode()


def test_grouped_exports_and_api_groups_sum_product_rows_the_per_request_export_lists_all(ledger, client):
    params = export_params_parse(since="2025-03-01", until="2025-03-31", group_by="day")
    grouped = list(
        csv.DictReader(io.StringIO(b"".join(usage_export_chunks(tenant=ledger.tenant, params=params)).decode()))
    )
    per_request = export_params_parse(since="2025-03-01", until="2025-03-31")
    rows = list(
        csv.DictReader(io.StringIO(b"".join(usage_export_chunks(tenant=ledger.tenant, params=per_request)).decode()))
    )

    assert [(row["requests"], row["cost_usd"]) for row in grouped] == [("2", "0.3000000000")]
    assert sorted(row["kind"] for row in rows) == ["evaluation", "evaluation", "request", "request"]

    client.force_login(ledger.finance_user)
    api = client.get("/api/usage/", {**RANGE, "group_by": "model"}).json()
    assert [(group["model"], group["cost_usd"]) for group in api["results"]] == [("m-small", "0.3000000000")]


def test_statements_leave_evaluation_out_and_show_it_as_its_own_line(ledger):
    statement = statement_build(tenant=ledger.tenant, month=date(2025, 3, 1))
    customer = customer_statement_build(tenant=ledger.tenant, customer="alice", params=export_params_parse(**RANGE))

    assert statement.total_usd == Decimal("0.3")
    assert statement.evaluation_spend_usd == Decimal("0.041")
    assert "evaluation_spend,,,,,,,0.0410000000,0.04\r\n" in statement_csv(statement)
    assert (customer.totals.requests, customer.totals.cost_usd) == (1, Decimal("0.1"))
    assert [row.kind for row in customer.records()] == ["request"]
