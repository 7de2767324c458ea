"""Usage by end customer, for finance: grouped and filtered in the API and exports, a customer's statement, the
usage report and the dashboard's top customers, each of one tenant only ("alice" of acme is never globex's)."""

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from billing.finance.dashboard import top_customers
from billing.finance.exports import export_params_parse
from billing.finance.rollups import usage_rollups_rebuild
from billing.finance.statements import customer_statement_build, customer_statement_chunks
from billing.models import UsageKind, UsageRecord
from tenants.models import Role, Tenant
from tenants.services import membership_set
from tests.factories import UserFactory
from tests.finance.conftest import usage_row

DAY = datetime(2025, 3, 3, 12, tzinfo=UTC)
RANGE = {"since": "2025-03-01", "until": "2025-03-31"}


def named(row: UsageRecord, customer: str, **fields) -> UsageRecord:
    row.customer = customer
    for name, value in fields.items():
        setattr(row, name, value)
    return row


@pytest.fixture
def ledgers(acme, globex):
    """acme: alice twice (one request and its compression summary call), bob once, one without a customer;
    globex: an alice of its own, dearer."""
    UsageRecord.objects.bulk_create(
        [
            named(usage_row(acme.keys[0], created_at=DAY, cost="0.1000000001"), "alice", request_id="acme-a1"),
            named(
                usage_row(acme.keys[1], created_at=DAY + timedelta(hours=1), cost="0.0000000002"),
                "alice",
                request_id="acme-a1-summary",
                kind=UsageKind.COMPRESSION_SUMMARY,
                parent_request_id="acme-a1",
            ),
            named(usage_row(acme.keys[1], created_at=DAY + timedelta(days=1), cost="0.25", http_status=429), "bob"),
            named(usage_row(acme.keys[0], created_at=DAY, cost="0.5"), ""),
            named(usage_row(globex.keys[0], created_at=DAY, cost="9"), "alice", request_id="globex-a1"),
        ]
    )
    return acme, globex


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_usage_grouped_by_customer_is_the_tenants_own(client, ledgers):
    acme, _ = ledgers
    client.force_login(acme.finance_user)

    groups = client.get("/api/usage/", {"tenant": "acme", **RANGE, "group_by": "customer"}).json()["results"]
    foreign = client.get("/api/usage/", {"tenant": "globex", **RANGE, "group_by": "customer"})

    assert [(g["customer"], g["requests"], g["errors"], g["cost_usd"]) for g in groups] == [
        ("(no customer)", 1, 0, "0.5000000000"),
        ("alice", 1, 0, "0.1000000003"),
        ("bob", 1, 1, "0.2500000000"),
    ]
    assert sum(Decimal(group["cost_usd"]) for group in groups) == Decimal("0.8500000003")
    assert foreign.status_code == 404


def test_one_customers_rows_and_the_customer_column_in_exports(client, ledgers):
    acme, _ = ledgers
    client.force_login(acme.finance_user)

    rows = client.get("/api/usage/", {"tenant": "acme", **RANGE, "customer": "alice"}).json()["results"]
    exported = csv_rows(client.get("/api/usage/export.csv", {"tenant": "acme", **RANGE}))
    by_day = csv_rows(client.get("/api/usage/export.csv", {"tenant": "acme", **RANGE, "group_by": "day,customer"}))

    assert sorted(row["request_id"] for row in rows) == ["acme-a1", "acme-a1-summary"]
    assert [row["customer"] for row in exported] == ["alice", "", "alice", "bob"]
    assert [(row["day"], row["customer"], row["cost_usd"]) for row in by_day] == [
        ("2025-03-03", "(no customer)", "0.5000000000"),
        ("2025-03-03", "alice", "0.1000000003"),
        ("2025-03-04", "bob", "0.2500000000"),
    ]


def statement_lines(tenant, customer: str) -> list[list[str]]:
    params = export_params_parse(since="2025-03-01", until="2025-03-31")
    statement = customer_statement_build(tenant=tenant, customer=customer, params=params)
    return list(csv.reader(io.StringIO(b"".join(customer_statement_chunks(statement)).decode())))


def test_a_customers_statement_lists_its_rows_and_their_exact_total(ledgers):
    acme, _ = ledgers

    first, header, *rows, total = statement_lines(acme.tenant, "alice")

    assert first == [
        "tenant", "acme", "customer", "alice", "since", "2025-03-01", "until", "2025-03-31", "time_zone", "UTC",
        "requests", "1", "errors", "0", "cost_usd", "0.1000000003",
    ]  # fmt: skip
    assert header[:2] == ["section", "request_id"] and header[-1] == "customer"
    lines = [dict(zip(header, row, strict=True)) for row in rows]
    assert [(line["section"], line["request_id"], line["cost_usd"]) for line in lines] == [
        ("request", "acme-a1", "0.1000000001"),
        ("request", "acme-a1-summary", "0.0000000002"),
    ]
    totals = dict(zip(header, total, strict=True))
    assert (totals["section"], totals["cost_usd"], totals["cost_usd_rounded"]) == ("total", "0.1000000003", "0.10")
    assert totals["prompt_tokens"] == "20" and totals["request_id"] == ""
    assert sum(Decimal(line["cost_usd"]) for line in lines) == Decimal(totals["cost_usd"])


def test_a_customers_statement_names_the_zone_its_days_were_counted_in(ledgers):
    """A zone stored before time zones were checked is read as UTC: the statement says UTC, not the name it did not
    use."""
    acme, _ = ledgers
    Tenant.objects.unscoped().filter(pk=acme.tenant.pk).update(time_zone="Europe/Londn")
    acme.tenant.refresh_from_db()

    first = statement_lines(acme.tenant, "alice")[0]

    assert first[first.index("time_zone") + 1] == "UTC"


def test_a_statement_of_a_customer_only_another_tenant_has_is_empty(ledgers):
    acme, globex = ledgers
    assert [line[0] for line in statement_lines(acme.tenant, "carol")[1:]] == ["section", "total"]
    _, header, *rows, _ = statement_lines(globex.tenant, "alice")
    assert [dict(zip(header, row, strict=True))["request_id"] for row in rows] == ["globex-a1"]


def test_the_statement_over_the_api_is_for_finance_of_the_tenant_only(client, ledgers):
    acme, _ = ledgers
    client.force_login(acme.finance_user)
    params = {"tenant": "acme", "customer": "alice", **RANGE}

    response = client.get("/api/usage/customer-statement.csv", params)
    foreign = client.get("/api/usage/customer-statement.csv", {**params, "tenant": "globex"})
    nameless = client.get("/api/usage/customer-statement.csv", {"tenant": "acme", **RANGE})
    viewer = UserFactory()
    membership_set(tenant=acme.tenant, user=viewer, role=Role.VIEWER)
    client.force_login(viewer)
    unauthorised = client.get("/api/usage/customer-statement.csv", params)

    body = b"".join(response.streaming_content).decode()
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "acme-a1-summary" in body and "globex-a1" not in body
    assert foreign.status_code == 404
    assert nameless.status_code == 400
    assert unauthorised.status_code == 404


def report(*args: str) -> str:
    out = StringIO()
    call_command(
        "usage_report", "--tenant", "acme", "--since", "2025-03-01", "--until", "2025-03-31", *args, stdout=out
    )
    return out.getvalue()


def test_usage_report_by_customer_and_for_one_customer(ledgers):
    by_customer = json.loads(report("--group-by", "customer", "--format", "json"))
    alice = json.loads(report("--group-by", "model", "--customer", "alice", "--format", "json"))
    statement = report("--customer", "alice", "--statement")

    assert [(row["group"], row["cost_usd"]) for row in by_customer["rows"]] == [
        ("(no customer)", "0.5000000000"),
        ("alice", "0.1000000003"),
        ("bob", "0.2500000000"),
    ]
    assert by_customer["total"]["cost_usd"] == "0.8500000003"
    assert (alice["customer"], alice["total"]["cost_usd"]) == ("alice", "0.1000000003")
    assert statement.startswith("tenant,acme,customer,alice,") and "globex-a1" not in statement
    with pytest.raises(CommandError, match="--statement needs --customer"):
        report("--statement")
    with pytest.raises(CommandError, match="--group-by is required"):
        report()


def test_top_customers_come_from_the_rollups_of_the_tenant(ledgers):
    acme, globex = ledgers
    for finance in (acme, globex):
        usage_rollups_rebuild(tenant=finance.tenant, first=date(2025, 3, 1), last=date(2025, 3, 31))

    top = top_customers(tenant=acme.tenant, since=date(2025, 3, 1), until=date(2025, 3, 31))
    first_day = top_customers(tenant=acme.tenant, since=date(2025, 3, 3), until=date(2025, 3, 3))

    assert [(row.customer, row.requests, row.cost_usd) for row in top] == [
        ("bob", 1, Decimal("0.25")),
        ("alice", 1, Decimal("0.1000000003")),
    ]
    assert [row.customer for row in first_day] == ["alice"]


def test_the_dashboard_shows_top_customers(client, admin_user, ledgers):
    acme, _ = ledgers
    usage_rollups_rebuild(tenant=acme.tenant, first=date(2025, 3, 1), last=date(2025, 3, 31))
    client.force_login(acme.finance_user)

    page = client.get(
        reverse("admin:billing_usage_dashboard"),
        {"tenant": acme.tenant.pk, "since": "2025-03-01", "until": "2025-03-31"},
    )

    assert page.status_code == 200
    panel = page.content.decode().split('id="top-customers"')[1].split("</div>")[0]
    assert panel.index("bob") < panel.index("alice")


def test_budget_api_shows_one_customers_period(client, ledgers):
    acme, _ = ledgers
    owner = UserFactory()
    membership_set(tenant=acme.tenant, user=owner, role=Role.OWNER)
    client.force_login(owner)
    created = client.post(
        "/api/budgets/?tenant=acme",
        {"scope": "customer", "period": "month", "limit_usd": "5", "thresholds": []},
        content_type="application/json",
    )
    budget_id = created.json()["id"]

    each = client.get(f"/api/budgets/{budget_id}/")
    alice = client.get(f"/api/budgets/{budget_id}/", {"customer": "alice"})

    assert created.status_code == 201, created.json()
    assert (each.json()["scope"], each.json()["customer"], each.json()["current_period"]) == ("customer", "", None)
    assert alice.json()["current_period"]["key"] == date.today().strftime("%Y-%m")
    refused = client.post(
        "/api/budgets/?tenant=acme",
        {"scope": "team", "team": "acme-search", "customer": "alice", "period": "day", "limit_usd": "1"},
        content_type="application/json",
    )
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "customer"


def test_admin_finds_a_customers_rows_and_sets_a_customer_budget(client, admin_user, ledgers):
    acme, _ = ledgers
    client.force_login(admin_user)

    found = client.get(reverse("admin:billing_usagerecord_changelist"), {"q": "alice"})
    named_only = client.get(reverse("admin:billing_usagerecord_changelist"), {"has_customer": "no"})
    added = client.post(
        reverse("admin:billing_budget_add"),
        {"tenant": acme.tenant.pk, "scope": "customer", "customer": "vip", "period": "day", "limit_usd": "2",
         "thresholds": "100", "action": "block", "is_active": "on"},
    )  # fmt: skip

    assert {row.request_id for row in found.context["cl"].result_list} == {"acme-a1", "acme-a1-summary", "globex-a1"}
    assert [row.customer for row in named_only.context["cl"].result_list] == [""]
    assert added.status_code == 302
    assert acme.tenant.budgets.get().target_label() == "customer vip"


def test_admin_adds_a_customer_rate_limit_and_changes_a_keys(client, admin_user, acme):
    client.force_login(admin_user)
    form = {"tenant": acme.tenant.pk, "requests_per_minute": "5", "is_active": "on"}

    each = client.post(reverse("admin:billing_ratelimit_add"), {**form, "scope": "customer"})
    mixed = client.post(reverse("admin:billing_ratelimit_add"), {**form, "scope": "customer", "team": acme.teams[0].pk})
    keyed = client.post(reverse("admin:billing_ratelimit_add"), {**form, "api_key": acme.keys[0].pk})
    key_limit = acme.tenant.rate_limits.get(scope="key")
    changed = client.post(
        reverse("admin:billing_ratelimit_change", args=[key_limit.pk]), {"requests_per_minute": "7", "is_active": "on"}
    )

    assert (each.status_code, keyed.status_code, changed.status_code) == (302, 302, 302)
    assert mixed.status_code == 200 and "not a team or an API key" in mixed.content.decode()
    limits = {limit.target_label(): limit.requests_per_minute for limit in acme.tenant.rate_limits.all()}
    assert limits == {"each customer": 5, f"key {acme.keys[0].prefix}": 7}
