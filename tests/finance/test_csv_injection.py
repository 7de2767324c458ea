"""Every CSV export writes a cell a spreadsheet would run as a formula as text (OWASP: a leading single quote), and
keeps the exporter's numbers, negative ones included, as numbers."""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from io import StringIO

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.urls import reverse

from billing.finance.csv_writer import FORMULA_TRIGGERS, PLAIN_NUMBER, formula_safe
from billing.finance.exports import usage_export_write
from billing.models import UsageExport, UsageRecord
from tests.factories import UserFactory
from tests.finance.conftest import usage_row

DAY = datetime(2025, 3, 3, 12, tzinfo=UTC)
RANGE = {"since": "2025-03-01", "until": "2025-03-31"}
HOSTILE_MODEL = "=cmd|' /C calc'!A0"
HOSTILE_TAGS = ["@SUM(1+1)*cmd|' /C calc'!A0", "+1+1", "-2+3+cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]
CREDIT = "-1.5000000000"


@pytest.fixture
def hostile_ledger(acme):
    """A requested and served model name and tags starting with every formula trigger, and a credit."""
    UsageRecord.objects.bulk_create(
        [
            usage_row(acme.keys[0], created_at=DAY + timedelta(minutes=i), model=HOSTILE_MODEL, tags=[tag])
            for i, tag in enumerate(HOSTILE_TAGS)
        ]
        + [usage_row(acme.keys[1], created_at=DAY + timedelta(hours=1), cost=CREDIT)]
    )
    return acme


def assert_formula_safe(text: str, *, expected: list[str]) -> None:
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    dangerous = [cell for cell in cells if cell[:1] in FORMULA_TRIGGERS and not PLAIN_NUMBER.fullmatch(cell)]
    assert dangerous == []
    assert {f"'{value}" for value in expected} <= set(cells)
    assert CREDIT in cells


def streamed(response) -> str:
    assert response.status_code == 200, response.content[:300]
    return b"".join(response.streaming_content).decode()


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [("", [HOSTILE_MODEL]), ("model", [HOSTILE_MODEL]), ("tag", HOSTILE_TAGS)],
    ids=["requests", "by-model", "by-tag"],
)
def test_api_export(client, hostile_ledger, group_by, expected):
    client.force_login(hostile_ledger.finance_user)
    response = client.get("/api/usage/export.csv", {"tenant": "acme", **RANGE, "group_by": group_by})
    assert_formula_safe(streamed(response), expected=expected)


def test_async_export(hostile_ledger, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    export = UsageExport.objects.create(
        tenant=hostile_ledger.tenant, since=date(2025, 3, 1), until=date(2025, 3, 31), group_by="model,tag"
    )
    written = usage_export_write(export=export)
    with default_storage.open(written.file_name) as stored:
        assert_formula_safe(stored.read().decode(), expected=[HOSTILE_MODEL, *HOSTILE_TAGS])


def test_admin_export_form_and_selected_rows_action(client, hostile_ledger):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    form = client.post(reverse("admin:billing_usage_export"), {"tenant": hostile_ledger.tenant.pk, **RANGE})
    assert_formula_safe(streamed(form), expected=[HOSTILE_MODEL])
    selected = client.post(
        reverse("admin:billing_usagerecord_changelist"),
        {
            "action": "export_selected_csv",
            "_selected_action": list(UsageRecord.objects.unscoped().values_list("pk", flat=True)),
        },
    )
    assert_formula_safe(streamed(selected), expected=[HOSTILE_MODEL])


def test_statement_csv(client, hostile_ledger):
    client.force_login(hostile_ledger.finance_user)
    response = client.get(
        reverse("admin:billing_usage_statement"), {"tenant": "acme", "month": "2025-03", "format": "csv"}
    )
    assert response.status_code == 200
    assert_formula_safe(response.content.decode(), expected=[HOSTILE_MODEL])


def test_usage_report_command_csv(hostile_ledger):
    stdout = StringIO()
    call_command(
        "usage_report",
        "--tenant",
        "acme",
        *("--since", "2025-03-01", "--until", "2025-03-31"),
        *("--group-by", "model", "--format", "csv"),
        stdout=stdout,
    )
    assert_formula_safe(stdout.getvalue(), expected=[HOSTILE_MODEL])


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        (-3, -3),
        ("-1.50", "-1.50"),
        ("0.0000000000", "0.0000000000"),
        ("-1.5e3", "'-1.5e3"),
        ("-", "'-"),
        ("+1", "'+1"),
        ("a=b", "a=b"),
        ("", ""),
        (None, None),
    ],
)
def test_only_text_that_is_not_a_plain_number_is_quoted(cell, written):
    assert formula_safe(cell) == written


def test_a_customer_id_is_written_as_text_in_exports_and_its_statement(client, acme):
    """A customer's id is whatever the client sent in `user` (printable, so no tab or carriage return)."""
    hostile = [tag for tag in HOSTILE_TAGS if tag.isprintable()]
    records = [usage_row(acme.keys[0], created_at=DAY, cost=CREDIT) for _ in hostile]
    for record, customer in zip(records, hostile, strict=True):
        record.customer = customer
    UsageRecord.objects.bulk_create(records)
    client.force_login(acme.finance_user)

    grouped = client.get("/api/usage/export.csv", {"tenant": "acme", **RANGE, "group_by": "customer"})
    statement = client.get("/api/usage/customer-statement.csv", {"tenant": "acme", "customer": hostile[0], **RANGE})

    assert_formula_safe(streamed(grouped), expected=hostile)
    assert_formula_safe(streamed(statement), expected=hostile[:1])
